"""Training throughput of MT-Diffusion presets against the single-task DDPM baseline, in one run.

    python benchmarks/train_speed.py [--steps 20] [--repeats 3] [--out benchmarks/results/train_speed.json]

Both arms use the same backbone, batch and synthetic data; arms are interleaved over repeats so
machine noise hits both alike. Reports img/s per arm and the ratio MT / DDPM (the paper says
its heads cost about 10%).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mtdiff.config import load_config
from mtdiff.data.sources import ImageSet
from mtdiff.train import Trainer


def synthetic(n: int = 512) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    return ImageSet((torch.rand(n, 1, 32, 32, generator=g) * 255).to(torch.uint8),
                    torch.randint(0, 10, (n,), generator=g), [str(i) for i in range(10)], "synthetic")


def time_steps(trainer: Trainer, steps: int) -> float:
    """Seconds per optimizer step, after two warm-up steps."""
    for _ in range(2):
        trainer.train_step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--arms", nargs="+", default=["mnist-ddpm", "mnist-masked-x", "mnist-masked-u"])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_speed.json")
    args = ap.parse_args()
    data = synthetic()
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms:
            cfg = load_config(arm, [f"train.device={args.device}", "train.sample_every=0"])
            trainers[arm] = Trainer(cfg, Path(tmp) / arm, data=data, progress=False)
        times: dict[str, list[float]] = {arm: [] for arm in args.arms}
        for _ in range(args.repeats):
            for arm, tr in trainers.items():
                times[arm].append(time_steps(tr, args.steps))
    base = args.arms[0]
    result = {"benchmark": "train_speed", "baseline": base, "device": str(trainers[base].device),
              "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "steps_per_repeat": args.steps, "repeats": args.repeats, "arms": {}}
    for arm, ts in times.items():
        tr = trainers[arm]
        sec = statistics.median(ts)
        result["arms"][arm] = {
            "img_per_s": tr.cfg.train.batch_size / sec, "sec_per_step": sec, "batch_size": tr.cfg.train.batch_size,
            "params": sum(p.numel() for p in tr.model.parameters()),
            "ratio_vs_baseline": statistics.median(times[base]) / sec,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{'arm':18s} {'img/s':>8s} {'params':>10s} {'vs ' + base:>16s}")
    for arm, r in result["arms"].items():
        print(f"{arm:18s} {r['img_per_s']:8.1f} {r['params']:10d} {r['ratio_vs_baseline']:16.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
