"""Few-step sampling: sample quality against the number of steps, and sampling speed.

    python -m benchmarks.sampling --run RUN_DIR [--num 500] [--steps 10,20,50,100,1000]
                                  [--samplers ddim,dpm-solver] [--precisions fp32,bf16] [--reference-steps 1000]
                                  [--device cpu] [--out-dir benchmarks/results]

Joint samples from one trained run with each sampler at each step count, all from the same seed, scored
against the run's whole test split with the offline feature extractor (FID and KID on MNIST-CNN
features for MNIST-like runs, EfficientNet-Lite0 otherwise; the names say so). The reference is DDIM
with 1000 steps, a near-exact solution of the probability-flow ODE that DPM-Solver++ also solves; the
ratio FID(steps) / FID(reference) is the figure of merit (goal: within 10% at 50 steps). Sampling
img/s is the wall clock of the whole batch loop (batched, under ``torch.inference_mode``). With
``--precisions fp32,bf16`` every row is sampled at each precision (``load_run(precision=...)``: the network
under autocast) and the others' speed is given as a ratio to fp32's at the same sampler and steps; the
reference is always fp32. ``--reference-steps`` makes a cheaper, less exact reference. Writes
``sampling.json`` and ``sampling.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import machine
from mtdiff.build import load_data
from mtdiff.cli.evaluate import default_extractor
from mtdiff.evaluate import joint_images
from mtdiff.metrics.quality import reference_stats, sample_quality
from mtdiff.pretrained.images import load_image_features
from mtdiff.runs import load_run

RESULTS = Path(__file__).parent / "results"
REFERENCE = ("ddim", 1000)


def sample(run, sampler: str, steps: int, num: int, batch: int, seed: int, device) -> tuple[torch.Tensor, float]:
    """``num`` joint samples in pixels and the seconds they took (every sampler starts from the same z_T)."""
    g = torch.Generator(device).manual_seed(seed)
    t0 = time.perf_counter()
    images = joint_images(run, num, batch=batch, generator=g, sampler=sampler, steps=steps, eta=0.0)  # ends on the CPU
    return images, time.perf_counter() - t0


def markdown(r: dict) -> str:
    m = r["machine"]
    fid, kid = r["metric_names"]["FID"], r["metric_names"]["KID"]
    lines = [
        "## Few-step sampling (`python -m benchmarks.sampling`)",
        "",
        f"Command: `{r['command']}`",
        "",
        (
            f"Run `{r['run']}` (step {r['run_step']}), {r['num']} joint samples per row against {r['n_reference']} "
            f"test images, seed {r['seed']}. Machine: {m['cpu_count']} CPUs ({m['cpu']}), {m['torch_threads']} torch "
            f"threads, torch {m['torch']}, device {m['device']} ({m['device_name']}). Reference: "
            f"{r['reference'][0]} with {r['reference'][1]} steps (fp32). FID from {r['num']} samples is biased "
            "upwards (KID is not); compare rows, not other papers' FIDs."
        ),
        "",
        f"| sampler | steps | precision | {fid} | FID / reference | {kid} | sampling img/s | speed / fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['sampler']} | {row['steps']} | {row['precision']} | {row['fid']:.3f} | {row['fid_ratio']:.3f} | "
            f"{row['kid']:.5f} | {row['img_per_s']:.1f} | {row['speed_vs_fp32']:.2f} |"
        )
    lines += [
        "",
        "Goal: at 50 steps within 10% of the reference FID. "
        + "; ".join(
            f"{k}: {'met' if v['met'] else '**not met**'} (ratio {v['ratio']:.3f})"
            for k, v in r["goal_50_steps"].items()
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a trained run directory")
    ap.add_argument("--num", type=int, default=500, help="samples per sampler and step count (default 500)")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--steps", default="10,20,50,100,1000", help="comma-separated step counts")
    ap.add_argument("--samplers", default="ddim,dpm-solver", help="comma-separated sampler names")
    ap.add_argument(
        "--precisions",
        default="fp32",
        help="comma-separated: fp32, bf16, fp16, auto (default fp32; the reference: fp32)",
    )
    ap.add_argument(
        "--reference-steps",
        type=int,
        default=REFERENCE[1],
        help=f"DDIM steps of the reference (default {REFERENCE[1]})",
    )
    ap.add_argument("--features", default=None, help="feature extractor (default: by the run's data)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = sorted({int(s) for s in args.steps.split(",")})
    samplers = args.samplers.split(",")
    precisions = ["fp32", *(p for p in dict.fromkeys(args.precisions.split(",")) if p != "fp32")]
    runs = {p: load_run(args.run, device=args.device, precision=p) for p in precisions}
    run, reference = runs["fp32"], (REFERENCE[0], args.reference_steps)
    name = args.features or default_extractor(run.config.data.channels, run.config.data.image_size)
    extractor = load_image_features(name, args.device)
    ref = reference_stats(extractor, load_data(run.config, "test"), cache_dir=run.directory / "eval")

    cases = [(s, k) for s in samplers for k in steps if not (s != reference[0] and k == reference[1])]
    cases = [(*reference, "fp32"), *[(*c, p) for c in cases for p in precisions if (*c, p) != (*reference, "fp32")]]
    rows = []
    for sampler, k, precision in cases:
        images, seconds = sample(runs[precision], sampler, k, args.num, args.batch, args.seed, args.device)
        scores = sample_quality(images, ref, extractor, seed=args.seed)
        fid_key = next(key for key in scores if key.startswith("FID"))
        kid_key = next(key for key in scores if key.startswith("KID"))
        rows.append(
            {
                "sampler": sampler,
                "steps": k,
                "precision": precision,
                "fid": scores[fid_key],
                "kid": scores[kid_key],
                "seconds": round(seconds, 2),
                "img_per_s": args.num / seconds,
                "scores": scores,
            }
        )
        print(
            f"[sampling] {sampler} {k} steps, {precision}: {fid_key} {scores[fid_key]:.3f}, "
            f"{args.num / seconds:.1f} img/s",
            flush=True,
        )
    ref_fid = rows[0]["fid"]
    fp32_speed = {(row["sampler"], row["steps"]): row["img_per_s"] for row in rows if row["precision"] == "fp32"}
    for row in rows:
        row["fid_ratio"] = row["fid"] / ref_fid
        row["speed_vs_fp32"] = row["img_per_s"] / fp32_speed[row["sampler"], row["steps"]]
    goal = {
        row["sampler"]: {"ratio": row["fid_ratio"], "met": row["fid_ratio"] <= 1.10}
        for row in rows
        if row["steps"] == 50 and row["precision"] == "fp32"
    }
    result = {
        "benchmark": "sampling",
        "command": shlex.join(["python", "-m", "benchmarks.sampling", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(args.device),
        "run": str(args.run),
        "run_step": run.step,
        "num": args.num,
        "n_reference": int(ref["n"]),
        "seed": args.seed,
        "reference": list(reference),
        "precisions": precisions,
        "metric_names": {"FID": fid_key, "KID": kid_key},
        "rows": rows,
        "goal_50_steps": goal,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "sampling.json").write_text(json.dumps(result, indent=1))
    (args.out_dir / "sampling.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
