"""Task evaluations of a trained run through its own heads (inverse mode)."""
from __future__ import annotations

import torch

from .data.sources import ImageSet
from .runs import Run
from .sampling import inverse

__all__ = ["classify"]


@torch.no_grad()
def classify(run: Run, data: ImageSet, *, modality: str, t: int = 0, batch_size: int = 500, num: int | None = None,
             device="cpu", seed: int = 0) -> dict[str, float]:
    """Accuracy of the label head on ``data`` (image -> label, Section 4.2), reading z_t at index t."""
    if data.labels is None:
        raise ValueError(f"{data.name!r} has no labels to classify against")
    n = len(data) if num is None else min(num, len(data))
    g = torch.Generator(device).manual_seed(seed)
    correct, nll = 0, 0.0
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        z0, y = data.to_float(idx).to(device), data.labels[idx].to(device)
        probs = inverse(run.model, run.process, z0, modality, t=t, generator=g)
        correct += int((probs.argmax(1) == y).sum())
        nll += float(-probs.gather(1, y[:, None]).clamp_min(1e-12).log().sum())
    return {"accuracy": correct / n, "nll": nll / n, "n": n, "t": t}
