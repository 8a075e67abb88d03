"""Host milliseconds per step of the training data path for one process of a torchrun job, before and after
each process gathered only its own rows.

    python -m benchmarks.datapath [--batch 256] [--ranks 8] [--images 8192] [--steps 200] [--repeats 3]

Synthetic ImageNet-64-shaped data (uint8 [N, 3, 64, 64], seeded), memory-mapped from a .npy file as the data
cache maps a decoded folder. ``before``: the former path (``BatchStream(per_rank=False)``: every row of the
global batch gathered and converted to float32 on the host); ``after``: rank 0's ``batch / ranks`` rows
gathered as uint8 and converted (on the host here: on a GPU the conversion runs on the device and the copy
leaves from pinned memory). The arms alternate over ``--repeats`` rounds; the median round counts. Writes
``benchmarks/results/datapath.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine
from mtdiff.data import BatchStream, ImageSet

RESULTS = Path(__file__).resolve().parent / "results"


def mapped_set(n: int, size: int, folder: Path, seed: int) -> ImageSet:
    """``n`` random uint8 images [3, size, size] with labels, memory-mapped from ``folder``."""
    rng = np.random.default_rng(seed)
    np.save(folder / "images.npy", rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8))
    images = torch.from_numpy(np.load(folder / "images.npy", mmap_mode="c"))
    labels = torch.from_numpy(rng.integers(0, 1000, n, dtype=np.int64))
    return ImageSet(images, labels, [str(k) for k in range(1000)], "synthetic-64")


def time_arm(stream: BatchStream, steps: int, warmup: int) -> float:
    """Mean host milliseconds of ``stream.next()`` over ``steps`` calls after ``warmup``."""
    for _ in range(warmup):
        stream.next()
    t0 = time.perf_counter()
    for _ in range(steps):
        stream.next()
    return (time.perf_counter() - t0) * 1000 / steps


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256, help="global batch (default 256)")
    ap.add_argument("--ranks", type=int, default=8, help="processes sharing it (default 8)")
    ap.add_argument("--images", type=int, default=8192, help="synthetic images (default 8192)")
    ap.add_argument("--size", type=int, default=64, help="image side (default 64)")
    ap.add_argument("--steps", type=int, default=200, help="timed steps per arm and round (default 200)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="rounds; the median counts (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: torchrun's OMP_NUM_THREADS for 8 processes)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "datapath", help="path without extension")
    args = ap.parse_args(argv)
    if args.batch % args.ranks:
        ap.error(f"--batch {args.batch} must split evenly over --ranks {args.ranks}")
    local = args.batch // args.ranks
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="datapath-") as tmp:
        data = mapped_set(args.images, args.size, Path(tmp), args.seed)
        arms = {
            "before": BatchStream(data, args.batch, seed=args.seed, per_rank=False),
            "after": BatchStream(data, args.batch, seed=args.seed, rows=slice(0, local)),
        }
        rounds = {k: [] for k in arms}
        for _ in range(args.repeats):
            for name, stream in arms.items():
                rounds[name].append(time_arm(stream, args.steps, args.warmup))
    ms = {k: statistics.median(v) for k, v in rounds.items()}
    result = {
        "benchmark": "datapath",
        "command": "python -m benchmarks.datapath " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine("cpu"),
        "setting": {**{k: v for k, v in vars(args).items() if k != "out"}, "rows_per_rank": local},
        "host_ms_per_step": ms,
        "rounds_ms": rounds,
        "ratio_before_over_after": ms["before"] / ms["after"],
        "note": "measured on the CPU (no GPU here): 'after' converts its rows on the host too; on a GPU that "
        "conversion runs on the device and the host only gathers uint8 rows into pinned memory",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(table(result))
    print(table(result))
    return result


def table(r: dict) -> str:
    m, s, ms = r["machine"], r["setting"], r["host_ms_per_step"]
    return (
        f"# Data path: host ms per step, one of {s['ranks']} processes, global batch {s['batch']} of "
        f"{s['size']}x{s['size']}\n\n"
        f"{m['cpu']}, {m['cpu_count']} cores, torch {m['torch']}, torch threads: {m['torch_threads']}; no GPU. "
        f"Median of {s['repeats']} rounds of {s['steps']} steps; `{r['command'].strip()}`.\n\n"
        "| path | host ms / step |\n|---|---|\n"
        f"| before: all {s['batch']} rows gathered and converted to float32 | {ms['before']:.2f} |\n"
        f"| after: this process's {s['rows_per_rank']} rows, uint8, converted | {ms['after']:.2f} |\n"
        f"| ratio before / after | {r['ratio_before_over_after']:.1f}x |\n\n{r['note']}.\n"
    )


if __name__ == "__main__":
    main()
