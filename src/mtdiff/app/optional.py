"""gradio, an optional extra of mtdiff (``pip install "mtdiff[app]"``), imported on first use."""

from __future__ import annotations

import os

from ..errors import MtdiffError

__all__ = ["require_gradio", "INSTALL"]

INSTALL = 'pip install "mtdiff[app]"'


def require_gradio():
    """The gradio module, imported with its analytics off; an :class:`MtdiffError` saying how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls out at import or launch
    try:
        import gradio
    except ImportError:
        raise MtdiffError(f"the web app needs gradio: {INSTALL}") from None
    return gradio
