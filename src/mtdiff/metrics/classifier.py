"""Label/image agreement of generated (image, label) pairs under a frozen classifier.

The classifier is usually the external pretrained MNIST network of :mod:`mtdiff.pretrained.mnist`
(reported as the "MNIST-CNN (ccexam)" score); mtdiff never trains it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..pretrained.mnist import INPUT_SIZE, NUM_CLASSES

__all__ = ["label_agreement"]


def _label_indices(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Class indices [N] (int64, CPU) from index labels [N] or per-class scores [N, 10]."""
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if labels.dim() == 2:
        if labels.shape != (n, NUM_CLASSES):
            raise ValueError(f"probability labels must have shape [{n}, {NUM_CLASSES}], got {tuple(labels.shape)}")
        return labels.detach().argmax(dim=1).cpu()
    if labels.dim() == 1:
        if labels.shape[0] != n:
            raise ValueError(f"got {n} images but {labels.shape[0]} labels")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(
                f"index labels must be an integer tensor [N], got dtype {labels.dtype} "
                f"(pass per-class probabilities as [N, {NUM_CLASSES}])"
            )
        idx = labels.detach().cpu().long()
        if n and (idx.min() < 0 or idx.max() >= NUM_CLASSES):
            raise ValueError(
                f"index labels must lie in 0..{NUM_CLASSES - 1}, got range {int(idx.min())}..{int(idx.max())}"
            )
        return idx
    raise ValueError(f"labels must be indices [N] or probabilities [N, {NUM_CLASSES}], got shape {tuple(labels.shape)}")


@torch.no_grad()
def label_agreement(
    classifier: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 256,
) -> dict:
    """Label/image agreement of (image, label) pairs under the external "MNIST-CNN (ccexam)" classifier.

    Args:
        classifier: usually :func:`mtdiff.pretrained.mnist.load_mnist_classifier`'s result; any module
            mapping mtdiff images [B, 1, 32, 32] in [-1, 1] to logits [B, 10].
            It is only evaluated, never trained.
        images: float [N, 1, 32, 32] in [-1, 1].
        labels: class indices [N] (integer), or per-class probabilities /
            scores [N, 10] (reduced with argmax).
        batch_size: images per forward pass.

    Returns:
        ``{"agreement": fraction of i with argmax(classifier(images[i])) == labels[i],
        "n": N}``.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be a tensor [N, 1, {INPUT_SIZE}, {INPUT_SIZE}], got {tuple(images.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = int(images.shape[0])
    if n == 0:
        raise ValueError("label_agreement needs at least one image")
    target = _label_indices(labels, n)

    was_training = classifier.training
    classifier.eval()
    try:
        correct = 0
        for start in range(0, n, batch_size):
            logits = classifier(images[start : start + batch_size])
            if logits.dim() != 2 or logits.shape[1] != NUM_CLASSES:
                raise ValueError(f"classifier must return logits [B, {NUM_CLASSES}], got {tuple(logits.shape)}")
            pred = logits.argmax(dim=1).cpu()
            correct += int((pred == target[start : start + batch_size]).sum())
    finally:
        classifier.train(was_training)
    return {"agreement": correct / n, "n": n}
