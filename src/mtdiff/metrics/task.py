"""Task metrics: restoration / translation fidelity, label heads, representations.

- PSNR and SSIM (Wang et al. 2004; Gaussian window 11, sigma 1.5) per image, from torchmetrics, on images
  in [-1, 1] (data range 2);
- MSE on the masked (restored) and on the unmasked (known) pixels of a keep mask (1 = known);
- perceptual distance: standard LPIPS when its backbone weights are supplied (``mtdiff.pretrained.lpips``),
  else a "feature distance (<extractor> features)": the L2 distance between unit-normalised spatial
  features of a frozen extractor, in [0, 2], never to be reported as LPIPS;
- accuracy and expected calibration error (Guo et al. 2017; 15 equal-width bins, L1) of class probabilities,
  from torchmetrics' ``multiclass_calibration_error``;
- representation cosine: mean cosine similarity of paired rows of two [N, D] sets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "calibration",
    "feature_distance",
    "masked_errors",
    "perceptual_distance",
    "psnr",
    "representation_cosine",
    "ssim",
]

DATA_RANGE = 2.0  # mtdiff images live in [-1, 1]


def _pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(
            f"need two image batches [N, C, H, W] of one shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    return pred.double(), target.double()


def psnr(pred: Tensor, target: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """Per-image PSNR [N] in dB: 10 log10(range^2 / MSE)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    pred, target = _pair(pred, target)
    return peak_signal_noise_ratio(pred, target, data_range=data_range, reduction="none", dim=(1, 2, 3))


def ssim(pred: Tensor, target: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """Per-image SSIM [N] (Gaussian window 11, sigma 1.5, K1 = 0.01, K2 = 0.03)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    pred, target = _pair(pred, target)
    return structural_similarity_index_measure(pred, target, data_range=data_range, reduction="none")


def masked_errors(pred: Tensor, target: Tensor, keep: Tensor) -> dict[str, float]:
    """MSE over the masked pixels (keep = 0, what the model restored) and over the unmasked ones (keep = 1,
    known: should be ~0 when known pixels are kept), all channels; NaN where a region is empty."""
    pred, target = _pair(pred, target)
    keep = keep.to(pred).expand_as(pred)
    err = (pred - target) ** 2
    hidden = 1 - keep
    return {
        "mse_masked": float((err * hidden).sum() / hidden.sum()) if hidden.sum() > 0 else float("nan"),
        "mse_unmasked": float((err * keep).sum() / keep.sum()) if keep.sum() > 0 else float("nan"),
    }


@torch.no_grad()
def feature_distance(a: Tensor, b: Tensor, extractor) -> Tensor:
    """|f(a) / |f(a)| - f(b) / |f(b)|| per pair [N], f = ``extractor.spatial`` (flattened spatial features)."""
    fa, fb = (F.normalize(extractor.spatial(x).double(), dim=1) for x in _pair(a, b))
    return (fa - fb).norm(dim=1)


@torch.no_grad()
def perceptual_distance(a: Tensor, b: Tensor, *, lpips=None, extractor=None, batch_size: int = 64) -> dict[str, float]:
    """Mean perceptual distance of paired images: ``{"LPIPS (alex)": d}`` with an ``mtdiff.pretrained.lpips.LPIPS``
    module, else ``{"feature distance (<extractor label>)": d}`` with an image feature extractor."""
    if lpips is None and extractor is None:
        raise ValueError("perceptual_distance needs an LPIPS module or an image feature extractor")
    if lpips is not None:
        name, fn = f"LPIPS ({lpips.net})", lambda x, y: lpips(x.float(), y.float())
    else:
        name, fn = f"feature distance ({extractor.label})", lambda x, y: feature_distance(x, y, extractor)
    _pair(a, b)
    d = torch.cat(
        [fn(a[i : i + batch_size], b[i : i + batch_size]).double().cpu() for i in range(0, len(a), batch_size)]
    )
    return {name: float(d.mean())}


def calibration(probs: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, float]:
    """Accuracy and expected calibration error of class probabilities [N, K] against labels [N]:
    ECE = sum_b |B_b| / N |acc(B_b) - conf(B_b)| over ``n_bins`` equal-width confidence bins."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs, labels = torch.as_tensor(probs).double(), torch.as_tensor(labels).long()
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(
            f"need probabilities [N, K] and labels [N], got {tuple(probs.shape)} and {tuple(labels.shape)}"
        )
    if (
        probs.min() < 0
        or probs.max() > 1
        or not torch.allclose(probs.sum(1), torch.ones(len(probs), dtype=probs.dtype))
    ):
        raise ValueError("probs must be probabilities (rows in [0, 1] summing to 1); apply softmax to logits first")
    ece = multiclass_calibration_error(probs, labels, num_classes=probs.shape[1], n_bins=n_bins, norm="l1")
    return {"accuracy": float((probs.argmax(1) == labels).double().mean()), "ece": float(ece), "n": len(labels)}


def representation_cosine(a: Tensor, b: Tensor) -> float:
    """Mean cosine similarity of paired rows of a [N, D] and b [N, D]."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two sets [N, D] of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float(F.cosine_similarity(a, b, dim=1).mean())
