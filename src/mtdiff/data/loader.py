"""An in-memory, exactly resumable batch stream over an ImageSet.

Epoch e visits the samples in the permutation drawn from seed (seed, e); the position in the
stream is (epoch, offset), saved in checkpoints, so a resumed run sees the same batches.

Under torchrun each process reads only its own ``rows`` of the global batch: it gathers them as
uint8 from the (memory-mapped) set, copies them from pinned memory without waiting (CUDA) and
converts them to float on the device; with ``prefetch`` the next batch's copy is under way while
the current step computes. Its batch keeps the global batch's shape (every random draw is made for
all of it), and the rows of other processes are left unset: they are never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .imageset import ImageSet

__all__ = ["BatchStream"]


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """``x[idx]``; on the host a plain row copy (numpy's take: several times faster than torch's indexing
    kernel for a few hundred rows of a memory-mapped array, which also starts threads for them)."""
    if x.device.type != "cpu" or x.dtype == torch.bfloat16:  # numpy has no bfloat16
        return x[idx]
    return torch.from_numpy(np.take(x.numpy(), idx.numpy(), axis=0))


@dataclass
class BatchStream:
    """Batches {"image": float [-1, 1] [B, C, H, W], "label": long [B], **extras} of ``batch_size``
    samples (see :meth:`ImageSet.batch`; a paired folder adds "source").

    On a GPU the whole set moves to device memory once when it takes at most ``DEVICE_FRACTION`` of
    it, so a batch is a gather on the device rather than a copy from the host. ``rows``: this
    process's rows of the global batch (None: all of them). ``prefetch``: prepare the next batch when
    handing out one (None: on CUDA only). ``per_rank=False`` keeps the former path (every row
    gathered and converted on the host), for the data-path benchmark's comparison.
    """

    data: ImageSet
    batch_size: int
    seed: int = 0
    device: torch.device | str = "cpu"
    epoch: int = 0
    offset: int = 0
    rows: slice | None = None
    prefetch: bool | None = None
    per_rank: bool = True

    DEVICE_FRACTION = 0.1

    def __post_init__(self):
        n = len(self.data.images)
        if self.batch_size > n:
            raise ValueError(f"batch {self.batch_size} exceeds the {n} samples of {self.data.name!r}")
        self.device = torch.device(self.device)
        cuda = self.device.type == "cuda"
        memory = torch.cuda.get_device_properties(self.device).total_memory if cuda else 0
        if cuda and self.data.nbytes <= self.DEVICE_FRACTION * memory:
            self.data = self.data.to(self.device)
        self._pin = cuda and self.data.images.device.type == "cpu"
        self.prefetch = cuda if self.prefetch is None else self.prefetch
        self._perm_epoch, self._perm, self._perm_host = -1, None, None
        self._ahead: tuple[tuple[int, int], dict[str, Tensor]] | None = None

    def _permutation(self, epoch: int) -> Tensor:
        if self._perm_epoch != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(len(self.data.images), generator=g, device="cpu")  # the same order on any device
            if self.data.images.device.type == "cuda":  # one copy per epoch, from pinned memory: no wait
                self._perm_host = perm.pin_memory()  # kept alive until the copy is done
                perm = self._perm_host.to(self.data.images.device, non_blocking=True)
            self._perm, self._perm_epoch = perm, epoch
        return self._perm

    def _position(self) -> tuple[int, int]:
        """(epoch, offset) of the next batch (the last incomplete batch of an epoch is dropped)."""
        if self.offset + self.batch_size > len(self.data.images):
            return self.epoch + 1, 0
        return self.epoch, self.offset

    def next(self) -> dict[str, Tensor]:
        """The next batch."""
        pos = self._position()
        ahead, self._ahead = self._ahead, None
        batch = ahead[1] if ahead is not None and ahead[0] == pos else self._load(*pos)
        self.epoch, self.offset = pos[0], pos[1] + self.batch_size
        if self.prefetch:
            after = self._position()
            self._ahead = (after, self._load(*after))
        return batch

    def _load(self, epoch: int, offset: int) -> dict[str, Tensor]:
        idx = self._permutation(epoch)[offset:][: self.batch_size]
        if not self.per_rank:
            return self.data.batch(idx, self.device)
        rows = self.rows or slice(0, self.batch_size)
        out = {}
        for key, x in self.data.tensors().items():
            image = x.dtype == torch.uint8
            out[key] = self._rows(x, idx, rows) if image else self._move(_gather(x, idx))
        return out

    def _rows(self, images: Tensor, idx: Tensor, rows: slice) -> Tensor:
        """float [-1, 1] [B, ...] on the device whose ``rows`` hold ``images[idx[rows]]`` (the rest unset)."""
        mine = self._move(_gather(images, idx[rows])).to(torch.float32) / 127.5 - 1.0  # converted on the device
        if rows == slice(0, self.batch_size):
            return mine
        out = mine.new_empty((self.batch_size, *mine.shape[1:]))
        out[rows] = mine
        return out

    def _move(self, x: Tensor) -> Tensor:
        """``x`` on the device: from pinned memory without waiting on CUDA, a no-op on the CPU."""
        if self._pin and x.device.type == "cpu":
            x = x.pin_memory()
        return x.to(self.device, non_blocking=True)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed, "global_batch": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"data stream seed {self.seed} differs from the checkpoint's {state['seed']}")
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._ahead = None
