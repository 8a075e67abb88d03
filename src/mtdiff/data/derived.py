"""Modalities derived from images, for the image-translation experiment (appendix E.1).

At MNIST scale the paper's paired modalities are made from the images themselves:

* ``class_mask(images, labels)``: a semantic segmentation map, LongTensor ``[B, H, W]``;
  foreground pixels get class ``label + 1``, background gets 0 (so a dataset with
  ``num_classes`` labels has ``num_classes + 1`` segmentation classes).
* ``edge_map(images)``: a binary edge image like pix2pix's edges2shoes, float
  ``[B, 1, H, W]`` in {-1, +1} (edges +1, rest -1).

Images are float ``[B, C, H, W]`` in [-1, 1] with background -1. ``derive(name, ...)``
dispatches by name over :data:`DERIVED`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["DERIVED", "DERIVED_NAMES", "class_mask", "derive", "edge_map"]

# Gradient magnitudes at or below this (grey in [0, 1]) count as "no gradient": a
# constant image gives exactly or almost exactly 0, never a spurious edge.
_FLAT_EPS = 1e-6

# Sobel d/dx and d/dy kernels [2, 1, 3, 3], one copy per (device, dtype): no host-to-device copy per call.
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=torch.float64)
_SOBEL: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _sobel(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    kernels = _SOBEL.get((device, dtype))
    if kernels is None:
        with torch.inference_mode(False):  # an inference tensor could not be saved for a later backward
            kernels = torch.stack([_SOBEL_X, _SOBEL_X.t()])[:, None].to(device, dtype)
        _SOBEL[(device, dtype)] = kernels
    return kernels


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        dtype = images.dtype if isinstance(images, torch.Tensor) else ""
        raise ValueError(f"images must be a float tensor [B, C, H, W], got {dtype} {shape}")


def class_mask(images: torch.Tensor, labels: torch.Tensor, *, threshold: float = 0.0) -> torch.Tensor:
    """Per-pixel segmentation classes, LongTensor [B, H, W].

    A pixel is foreground when its value (channel mean for C > 1) is > ``threshold``;
    foreground pixels of image b get ``labels[b] + 1``, background pixels get 0.
    """
    _check_images(images)
    if (
        not isinstance(labels, torch.Tensor)
        or labels.shape != (images.shape[0],)
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
    ):
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor [B] with B = {images.shape[0]}, got {got}")
    # checked on the labels' device without a host sync: raises here on the CPU, asynchronously on a GPU
    try:
        torch._assert_async((labels >= 0).all(), "class_mask: labels must be >= 0")
    except RuntimeError:
        raise ValueError(f"labels must be >= 0, got min {int(labels.min())}") from None
    if not -1.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [-1, 1), got {threshold!r}")
    foreground = images.mean(dim=1) > threshold  # [B, H, W]
    classes = labels.to(device=images.device, dtype=torch.long)[:, None, None] + 1
    return torch.where(foreground, classes, torch.zeros_like(classes))


def edge_map(images: torch.Tensor, *, threshold: float = 0.2) -> torch.Tensor:
    """Binary Sobel edge map, [B, 1, H, W] in {-1, +1} with the dtype of ``images``.

    grey = (channel mean + 1) / 2 in [0, 1]; the Sobel gradient magnitude (replicate
    padding) is divided by its per-image max and pixels with a normalised magnitude
    > ``threshold`` are edges (+1). An image without gradient has no edges.
    """
    _check_images(images)
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    grey = (images.mean(dim=1, keepdim=True) + 1.0) / 2.0
    kernels = _sobel(grey.device, grey.dtype)  # [2, 1, 3, 3]: d/dx, d/dy
    grad = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels)  # [B, 2, H, W]
    mag = grad.pow(2).sum(dim=1, keepdim=True).sqrt()  # [B, 1, H, W]
    peak = mag.amax(dim=(2, 3), keepdim=True)
    flat = peak <= _FLAT_EPS
    norm = mag / torch.where(flat, torch.ones_like(peak), peak)
    edges = (norm > threshold) & ~flat
    return torch.where(edges, 1.0, -1.0).to(images.dtype)


def _derive_class_mask(images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    if labels is None:
        raise ValueError("labels are required for the derived modality 'class_mask', got None")
    return class_mask(images, labels)


def _derive_edges(images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    return edge_map(images)


# name -> fn(images, labels) with default settings; labels may be None where unused.
DERIVED: dict[str, Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    "class_mask": _derive_class_mask,
    "edges": _derive_edges,
}
DERIVED_NAMES: tuple[str, ...] = tuple(DERIVED)


def derive(name: str, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The derived modality ``name`` ("class_mask" or "edges") of ``images`` with default settings."""
    if name not in DERIVED:
        raise ValueError(f"unknown derived modality {name!r}; choices: {', '.join(map(repr, DERIVED))}")
    return DERIVED[name](images, labels)
