"""Many processes through ``torchrun``: the process group, this process's share and device.

``torchrun --nproc_per_node=K -m mtdiff train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; one
process without them is world size 1 and touches nothing in ``torch.distributed``. NCCL joins
GPU processes, gloo CPU ones.
"""

from __future__ import annotations

import datetime
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

__all__ = ["World", "init_world", "close_world", "main_first", "shard", "wrap_ddp"]

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` processes (rank 0 writes checkpoints, logs and samples)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The mean of each scalar over the processes (one collective for all of them)."""
        if not self.distributed or not values:
            return values
        flat = torch.stack([v.float().reshape(()) for v in values.values()])
        dist.all_reduce(flat)
        return dict(zip(values, flat / self.size))

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's ``x`` [n_r, ...] along dim 0 in rank order (sizes may differ by rank)."""
        if not self.distributed:
            return x
        sizes: list[int] = [0] * self.size
        dist.all_gather_object(sizes, int(x.shape[0]))
        longest = max(sizes)  # pad to the longest, gather, trim
        padded = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))])
        bufs = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(bufs, padded.contiguous())
        return torch.cat([b[:n] for b, n in zip(bufs, sizes)])


def init_world(device: str) -> tuple[World, str]:
    """Join the process group when launched by torchrun; returns the World and the device this process
    uses (``cuda`` becomes ``cuda:LOCAL_RANK``). ``device`` is the config's ``train.device``."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return World(), device
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(world.local_rank)
        device = f"cuda:{world.local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            timeout=datetime.timedelta(minutes=30),
            **({"device_id": torch.device(device)} if cuda else {}),
        )
    return world, device


def close_world() -> None:
    """Leave the process group (at the end of a torchrun command; nothing otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main_first(world: World, fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0, then on the other ranks: what rank 0 leaves on disk (decoded images in the data
    cache) the others reuse instead of making it again. If rank 0 fails, the others still run ``fn`` and
    fail with the same message rather than wait forever."""
    if not world.main:
        world.barrier()
    try:
        return fn()
    finally:
        if world.main:
            world.barrier()


def shard(n: int, world: World) -> range:
    """The indices of ``n`` items that this process handles: a contiguous block, sizes differing by at most one."""
    per, extra = divmod(n, world.size)
    start = world.rank * per + min(world.rank, extra)
    return range(start, start + per + (world.rank < extra))


def wrap_ddp(model: torch.nn.Module, device: torch.device, ddp=None) -> torch.nn.Module:
    """``model`` in DistributedDataParallel without the per-forward buffer broadcast (mtdiff's buffers are
    constants): ``forward_sync_buffers=False`` where torch has it (2.13 on), ``broadcast_buffers=False`` before."""
    if ddp is None:
        from torch.nn.parallel import DistributedDataParallel as ddp
    no_sync = (
        "forward_sync_buffers"
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else "broadcast_buffers"
    )
    return ddp(model, device_ids=[device] if device.type == "cuda" else None, **{no_sync: False})
