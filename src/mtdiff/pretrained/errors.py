"""The error of a frozen network that is not installed (below the extractors that raise it)."""

from __future__ import annotations

from ..errors import MtdiffError

__all__ = ["MissingExtractorError"]


class MissingExtractorError(MtdiffError, RuntimeError):
    """The package or weights file of a feature extractor is not available."""
