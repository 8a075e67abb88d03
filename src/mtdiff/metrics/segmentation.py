"""Segmentation scores of the paper's Table 4, following CycleGAN's FCN-score definitions.

Everything is derived from a confusion matrix ``conf[K, K]`` (rows = target class,
columns = predicted class):

* pixel accuracy: ``trace(conf) / conf.sum()``;
* class accuracy: mean per-class recall ``conf[k, k] / conf[k, :].sum()`` over the
  classes present in the target;
* class IoU: mean ``TP / (TP + FP + FN)`` over the classes present in the target or
  the prediction.

``SegmentationMeter`` accumulates the confusion matrix over batches.
"""

from __future__ import annotations

import math

import torch

__all__ = ["SegmentationMeter", "confusion_matrix", "segmentation_scores"]


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")


def _check_ignore_index(ignore_index: int | None) -> None:
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise ValueError(f"ignore_index must be None or an int, got {ignore_index!r}")


def confusion_matrix(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Confusion matrix, int64 [K, K] with K = ``num_classes``; entry [t, p] counts pixels
    of target class t predicted as p.

    ``pred`` and ``target`` are integer tensors of the same shape. Pixels whose target
    equals ``ignore_index`` are dropped (whatever their prediction); all other values
    must lie in [0, K - 1].
    """
    _check_num_classes(num_classes)
    _check_ignore_index(ignore_index)
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor) or not _is_integer(t):
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be an integer tensor of class indices, got {got}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    pred = pred.reshape(-1).to(torch.long)
    target = target.reshape(-1).to(device=pred.device, dtype=torch.long)
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    k = num_classes
    for name, t in (("pred", pred), ("target", target)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
            extra = f" (or ignore_index={ignore_index})" if name == "target" and ignore_index is not None else ""
            raise ValueError(
                f"{name} values must be in the range [0, {k - 1}]{extra}, got min {int(t.min())}, max {int(t.max())}"
            )
    return torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)


def segmentation_scores(conf: torch.Tensor) -> dict:
    """Scores from a confusion matrix [K, K] (rows = target, cols = pred).

    Returns floats ``pixel_accuracy``, ``class_accuracy`` (mean recall over classes
    present in the target), ``class_iou`` (mean IoU over classes present in target or
    prediction) and the list ``per_class_iou`` (NaN for classes absent from both).
    """
    if not isinstance(conf, torch.Tensor) or conf.dim() != 2 or conf.shape[0] != conf.shape[1]:
        got = tuple(conf.shape) if isinstance(conf, torch.Tensor) else type(conf).__name__
        raise ValueError(f"conf must be a square tensor [K, K], got {got}")
    c = conf.detach().to(device="cpu", dtype=torch.float64)
    if bool((c < 0).any()):
        raise ValueError("conf must hold non-negative counts")
    total = c.sum()
    if total <= 0:
        raise ValueError("conf must count at least one pixel, got an all-zero matrix")
    tp = c.diagonal()
    in_target = c.sum(dim=1)
    in_pred = c.sum(dim=0)
    union = in_target + in_pred - tp
    nan = torch.full_like(tp, math.nan)
    recall = torch.where(in_target > 0, tp / in_target.clamp_min(1), nan)
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    return {
        "pixel_accuracy": float(tp.sum() / total),
        "class_accuracy": float(recall.nanmean()),
        "class_iou": float(iou.nanmean()),
        "per_class_iou": iou.tolist(),
    }


class SegmentationMeter:
    """Accumulates a confusion matrix over batches; ``compute()`` gives the scores."""

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        _check_num_classes(num_classes)
        _check_ignore_index(ignore_index)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch. ``pred``: class indices shaped like ``target``, or logits
        [B, K, ...] for a target [B, ...] (argmax over dim 1)."""
        if not isinstance(target, torch.Tensor):
            raise ValueError(f"target must be an integer tensor of class indices, got {type(target).__name__}")
        if isinstance(pred, torch.Tensor) and pred.is_floating_point():
            if pred.dim() != target.dim() + 1 or pred.shape[1] != self.num_classes:
                raise ValueError(
                    f"float pred must be logits [B, {self.num_classes}, ...] for target "
                    f"{tuple(target.shape)}, got {tuple(pred.shape)}"
                )
            pred = pred.argmax(dim=1)
        conf = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self.confusion = self.confusion + conf.to(self.confusion.device)

    def compute(self) -> dict:
        """Scores of everything added since construction or the last ``reset()``."""
        return segmentation_scores(self.confusion)

    def reset(self) -> None:
        """Forget all accumulated counts."""
        self.confusion = torch.zeros_like(self.confusion)
