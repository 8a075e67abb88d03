"""Small helpers the kind modules share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..config import ModalityConfig

__all__ = ["per_sample_mean", "generator_device", "fixed_normal", "resolve_dim"]


def per_sample_mean(x: Tensor) -> Tensor:
    """[B, ...] -> [B]."""
    return x.reshape(x.shape[0], -1).mean(1)


def generator_device(generator: torch.Generator | None, device) -> torch.device:
    """Where a draw from ``generator`` must happen (its own device; ``device`` for the global RNG)."""
    return generator.device if generator is not None else torch.device(device)


def fixed_normal(seed: int, *shape: int) -> Tensor:
    """A fixed random map, reproducible from its seed and saved with the model as a buffer."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def resolve_dim(mc: ModalityConfig, key: str, what: str, name: str | None, known: Mapping[str, int]) -> None:
    """Vector and text widths: ``dim`` given, or known from the extractor / text encoder ``name`` (which must agree)."""
    if name in known:
        if mc.dim not in (0, known[name]):
            raise ValueError(f"{key}.dim={mc.dim} but {what} {name!r} gives {known[name]}-d vectors")
        mc.dim = known[name]
    if mc.dim <= 0:
        raise ValueError(f"{key}.dim must be > 0 for a {mc.kind} modality (or name a known {what}), got {mc.dim}")
