"""What the discrete kinds (``label``, ``segmentation``) share: data are class indices or probability vectors,
the head's output is logits and the KL term a cross-entropy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Modality, given_rows
from .common import per_sample_mean

if TYPE_CHECKING:
    from ..config import ModalityConfig

__all__ = ["Discrete", "check_num_classes"]


def _check_classes(x: Tensor, num_classes: int, name: str) -> None:
    """Class indices must lie in [0, num_classes). On the CPU a clear error; on a GPU the check runs on the
    device and fails at the next synchronisation, so a training step never waits for the host."""
    if not x.numel():
        return
    if x.device.type != "cpu":
        torch._assert_async(
            ((x >= 0) & (x < num_classes)).all(), f"modality {name!r}: class indices must be in [0, {num_classes})"
        )
    elif int(x.min()) < 0 or int(x.max()) >= num_classes:
        raise ValueError(
            f"modality {name!r}: class indices must be in [0, {num_classes}), "
            f"got range [{int(x.min())}, {int(x.max())}]"
        )


def check_num_classes(mc: ModalityConfig, key: str) -> None:
    """``num_classes`` of a discrete kind's config: at least two."""
    if mc.num_classes < 2:
        raise ValueError(f"{key}.num_classes must be >= 2, got {mc.num_classes}")


class Discrete(Modality):
    """Shared parts of label-like modalities: data are indices or probability vectors."""

    num_classes: int

    @classmethod
    def configure(cls, mc, *, key, variant):
        super().configure(mc, key=key, variant=variant)
        check_num_classes(mc, key)

    def probs(self, x: Tensor) -> Tensor:
        """Indices [B, ...] or probabilities [B, K, ...] -> probabilities [B, K, ...] (float)."""
        if x.dtype in (torch.int64, torch.int32, torch.uint8, torch.int16):
            _check_classes(x, self.num_classes, self.name)
            oh = (
                x.long()[..., None] == torch.arange(self.num_classes, device=x.device)
            ).float()  # one-hot, no range read
            return oh.movedim(-1, 1) if oh.ndim > 2 else oh
        return x.float()

    def canonical(self, x):
        return self.probs(x)

    def _given_indices(self, x: Tensor, batch: int | None, shape: tuple[int, ...], what: str) -> Tensor:
        """Class indices [N, *shape] in [0, K) from a user's value (see ``Modality.given``)."""
        what = f"{what} of class indices in [0, {self.num_classes})"
        x = given_rows(x, batch, shape, what, floating=False)
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_classes):
            raise ValueError(f"expected {what}, got values in [{int(x.min())}, {int(x.max())}]")
        return x.long()

    def loss(self, pred, x):
        """Cross-entropy = the KL to the one-hot (or soft) target, up to the target's entropy."""
        logp = F.log_softmax(pred.float(), dim=1)
        return per_sample_mean(-(self.probs(x) * logp).sum(1))

    def estimate(self, pred):
        return F.softmax(pred.float(), dim=1)
