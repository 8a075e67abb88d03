"""The time a run of ``paper_claims.py`` will take, from training steps and sampling passes measured on the spot."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from mtdiff.build import build_model
from mtdiff.config import Config
from mtdiff.runs import resolve_device

from .arms import TABLES, Scale, objective_of, trainer_class
from .paper import PATCHES


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, repeats: int, device) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call (robust to a busy machine)."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def calibrate(cfgs: dict[str, Config], ddpm: Config, data, batch: int) -> dict:
    """Measured now: seconds per training step of each arm in ``cfgs`` (median of 3 after a warm-up) and seconds
    per image of one sampling forward pass of the DDPM network (batches of ``batch``)."""
    per_step = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm, cfg in cfgs.items():
            tr = trainer_class(objective_of(arm))(cfg, Path(tmp) / arm, data=data, progress=False)
            per_step[arm] = _timed(tr.train_step, 3, tr.device)
    device = resolve_device(ddpm.train.device)
    model = build_model(ddpm).to(device).eval()
    z = torch.randn(batch, *model.z_shape, device=device)
    tt = torch.full((batch,), ddpm.diffusion.timesteps // 2, dtype=torch.long, device=device)
    forward = _timed(lambda: model.predict(z, tt, {}), 3, device) / batch
    return {"sec_per_step": per_step, "sec_per_forward_image": forward}


def estimate(
    scale: Scale,
    remaining: dict[str, int],
    speed: dict,
    num_test: int,
    evaluations: int = 1,
    tables: tuple[str, ...] = tuple(TABLES),
) -> dict[str, float]:
    """Seconds for the remaining training steps of each arm (x its measured seconds per step) and for all
    ``evaluations`` of ``tables`` (one per seed: network evaluations x measured seconds per image forward, and
    the FID-family scoring), plus 30 s for data and reference features."""
    s = scale.sample_steps
    forwards = {
        "table2": 5 * scale.num_samples * s,
        "table1": len(PATCHES) * scale.num_restore * (2 * s + s // 2),  # MT-X, RePaint, SDEdit from T/2
        "table4": 2 * scale.num_translate * (s + 2),  # + the own-head reads
        "figure6": 4 * (scale.num_classify or num_test),
    }
    out = {"training": sum(n * speed["sec_per_step"].get(arm, 0.0) for arm, n in remaining.items())}
    out.update({k: evaluations * n * speed["sec_per_forward_image"] for k, n in forwards.items() if k in tables})
    if "table2" in tables:
        out["table2_scoring"] = evaluations * 5 * (2 + scale.num_samples / 100)  # FID family: ~12 s per 1000 samples
    out["total"] = sum(out.values()) + 30
    return out
