"""An in-memory, exactly resumable batch stream over an ImageSet.

Epoch e visits the samples in the permutation drawn from seed (seed, e); the position in the
stream is (epoch, offset), saved in checkpoints, so a resumed run sees the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .imageset import ImageSet

__all__ = ["BatchStream"]


@dataclass
class BatchStream:
    """Batches {"image": float [-1, 1] [B, C, H, W], "label": long [B], **extras} of ``batch_size``
    samples (see :meth:`ImageSet.batch`; a paired folder adds "source").

    On a GPU the whole set moves to device memory once when it takes at most ``DEVICE_FRACTION`` of
    it, so a batch is a gather on the device rather than a copy from the host.
    """

    data: ImageSet
    batch_size: int
    seed: int = 0
    device: torch.device | str = "cpu"
    epoch: int = 0
    offset: int = 0

    DEVICE_FRACTION = 0.1

    def __post_init__(self):
        n = len(self.data.images)
        if self.batch_size > n:
            raise ValueError(f"batch {self.batch_size} exceeds the {n} samples of {self.data.name!r}")
        device = torch.device(self.device)
        if (
            device.type == "cuda"
            and self.data.nbytes <= self.DEVICE_FRACTION * torch.cuda.get_device_properties(device).total_memory
        ):
            self.data = self.data.to(device)
        self._perm_epoch, self._perm = -1, None

    def _permutation(self) -> Tensor:
        if self._perm_epoch != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            perm = torch.randperm(len(self.data.images), generator=g, device="cpu")  # the same order on any device
            self._perm, self._perm_epoch = perm.to(self.data.images.device), self.epoch  # one copy per epoch
        return self._perm

    def next(self) -> dict[str, Tensor]:
        """The next batch (the last incomplete batch of an epoch is dropped)."""
        if self.offset + self.batch_size > len(self.data.images):
            self.epoch, self.offset = self.epoch + 1, 0
        idx = self._permutation()[self.offset :][: self.batch_size]
        self.offset += self.batch_size
        return self.data.batch(idx, self.device)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed, "global_batch": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"data stream seed {self.seed} differs from the checkpoint's {state['seed']}")
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
