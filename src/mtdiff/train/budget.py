"""Training for a wall-clock budget: the number of steps that fit, timed on this machine.

The learning rate decays to the end of a run's ``train.steps``, so a budget in minutes has to become a
step count before the run starts; :func:`steps_for_minutes` times the run's own training step on a
throwaway trainer (same config, data and device) and divides.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ..config import Config
from ..data.imageset import ImageSet
from .trainer import Trainer

__all__ = ["steps_for_minutes"]


def steps_for_minutes(
    cfg: Config, minutes: float, *, data: ImageSet | None = None, calibrate: int = 20, warm: int = 3
) -> tuple[int, float]:
    """(steps, seconds per step): how many training steps of ``cfg`` fit in ``minutes`` here, from the mean
    time of ``calibrate`` steps after ``warm`` untimed ones (at least one step). The probe's weights and
    files are thrown away; a run started afterwards is not affected by it."""
    if not minutes > 0 or calibrate < 1:
        raise ValueError(f"minutes must be > 0 and calibrate >= 1, got {minutes} and {calibrate}")
    with tempfile.TemporaryDirectory(prefix="mtdiff-probe-") as tmp:
        probe = Trainer(cfg, Path(tmp) / "probe", data=data, progress=False)
        for _ in range(warm):
            probe.train_step()
        t0 = time.perf_counter()
        for _ in range(calibrate):
            probe.train_step()
        seconds = (time.perf_counter() - t0) / calibrate
        del probe
    return max(1, int(minutes * 60 / seconds)), seconds
