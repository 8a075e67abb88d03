"""Every MNIST preset at its own budget, its joint samples scored by the frozen MNIST classifiers.

    python -m benchmarks.presets [--presets mnist-ddpm,mnist-label-m,...] [--runs runs/presets]
                                 [--reuse PRESET=RUN_DIR ...] [--set KEY=V ...] [--num 500]
                                 [--sampler ddim] [--sample-steps 100] [--eta 1] [--out-dir benchmarks/results]
                                 [--tag NAME]

Each preset trains as shipped (its own ``train.steps``; ``--set`` overrides every preset, for smoke runs)
into ``RUNS/PRESET``, or continues a killed run there, or reuses a finished one; ``--reuse PRESET=DIR`` scores
a finished run trained elsewhere (``mtdiff train --config PRESET --out DIR``, or the preset trained for more
steps, such as a ``paper_claims.py --scale converged`` arm: the table shows each run's own steps). A run is
reused only when its saved config is the preset's, up to the keys that do not change the model or its training
(logging, checkpoint and sampling cadence, the device; and the steps of a ``--reuse`` run), so a stale run is
never scored under a preset's name.

``--num`` joint samples from scratch (the image with every other modality generated beside it; -X from the
complete mask) are scored with ``quality.score``: the fraction the MNIST-CNN (ccexam) recognises with
max p > 0.9, the same for the stricter digit-recognizer where installed, IS, class entropy, FID and KID on the
MNIST-CNN's features. Writes ``presets[-TAG].json``, ``.md`` and ``.png`` (the first 16 samples of each
preset, one row each).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import date
from pathlib import Path

import torch

from benchmarks.claims.arms import latest_step, saved_differences
from benchmarks.common import RESULTS, machine, where_run
from benchmarks.quality import CONFIDENT, score, strict_classifier
from mtdiff.runs import read_log

# The MNIST presets whose samples are digits (mnist-demo is `mtdiff demo`'s, scored in quality.py).
PRESETS = (
    "mnist-ddpm",
    "mnist-masked-u",
    "mnist-masked-x",
    "mnist-label-m",
    "mnist-label-e",
    "mnist-seg2img",
    "mnist-text2img",
)
# Keys a run may differ in from its preset and still be the preset's run.
CADENCE = ("train.log_every", "train.ckpt_every", "train.keep_checkpoints", "train.sample_every", "train.device")
GOAL = 0.95  # the recognised fraction every preset should reach at its budget


def _config(preset: str, sets: list[str]):
    from mtdiff.config import load_config

    return load_config(preset, [*sets, "train.sample_every=0", "train.device=cpu"])


def _trained_steps(run_dir: Path, cfg, *, own_steps: bool = False) -> int:
    """Steps already in ``run_dir`` (0 if none); an error if it holds another config (``own_steps``: a run of the
    preset trained for another number of steps is the preset's too)."""
    from mtdiff.checkpoint import has_checkpoints

    if not has_checkpoints(run_dir):
        if own_steps:
            raise SystemExit(f"--reuse: {run_dir} holds no checkpoint (train it with mtdiff train --out {run_dir})")
        return 0
    diff = saved_differences(run_dir, cfg, (*CADENCE, "sample.", *(("train.steps",) if own_steps else ())))
    if diff:
        raise SystemExit(f"{run_dir} is not a run of this preset: its config differs in {', '.join(diff)}")
    return latest_step(run_dir)


def _log_minutes(run_dir: Path, batch: int) -> float | None:
    """Training minutes as the run's log measured them (steps between log lines / images per second)."""
    rows = [r for r in read_log(run_dir) if r.get("img_per_s")]
    if not rows:
        return None
    seconds, last = 0.0, 0
    for r in rows:
        seconds += (r["step"] - last) * batch / r["img_per_s"]
        last = r["step"]
    return seconds / 60


def train_preset(preset: str, run_dir: Path, sets: list[str], quiet: bool, *, reused: bool = False) -> dict:
    """Train, resume or reuse ``preset``'s run in ``run_dir`` (``reused``: a finished run trained elsewhere, for its
    own steps); what was done and how long the training took."""
    from mtdiff.build import load_data
    from mtdiff.runs import read_run_config
    from mtdiff.train import Trainer

    cfg = preset_cfg = _config(preset, sets)
    done = _trained_steps(run_dir, cfg, own_steps=reused)
    if reused:
        cfg = read_run_config(run_dir)
        if done < cfg.train.steps:
            raise SystemExit(f"--reuse: {run_dir} stopped at step {done} of {cfg.train.steps}; resume it first")
    status = "reused" if done >= cfg.train.steps else "resumed" if done else "trained"
    if status != "reused":
        print(f"[presets] {preset}: {status} from step {done} to {cfg.train.steps}", file=sys.stderr, flush=True)
        Trainer(cfg, run_dir, resume=done > 0, data=load_data(cfg, "train"), progress=not quiet).run()
    return {
        "preset": preset,
        "dir": str(run_dir),
        "status": status,
        "steps": cfg.train.steps,
        "preset_steps": preset_cfg.train.steps,
        "batch": cfg.train.batch_size,
        "train_minutes": _log_minutes(run_dir, cfg.train.batch_size),
    }


def parse_reuse(items: list[str]) -> dict[str, Path]:
    out = {}
    for text in items:
        preset, _, path = text.partition("=")
        if not preset or not path:
            raise SystemExit(f"--reuse {text!r}: expected PRESET=RUN_DIR")
        out[preset] = Path(path)
    return out


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"Command: `{r['command']}`",
        "",
        f"{r['num']} joint samples per preset ({r['sampler']}, {r['sample_steps']} steps, eta {r['eta']}), scored "
        f"against the {r['n_reference']} test digits. Scored on {where_run(m, r.get('date'))}. Goal: at least "
        f"{GOAL:.0%} recognised by the MNIST-CNN (ccexam).",
        "",
        "| preset | steps x batch | training min (its log) | run | recognised (ccexam, p > 0.9) "
        "| recognised (digit-recognizer) | both, same class | IS | class entropy | FID (MNIST-CNN) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in r["presets"]:
        s, tm = p["scores"], p["train_minutes"]
        steps = f"{p['steps']} x {p['batch']}" + (
            f" (preset: {p['preset_steps']})" if p["steps"] != p["preset_steps"] else ""
        )
        lines.append(
            f"| {p['preset']} | {steps} | {'-' if tm is None else f'{tm:.1f}'} | {p['status']} | "
            f"{s['recognised']:.3f} | {s.get('recognised_strict', float('nan')):.3f} | "
            f"{s.get('recognised_both', float('nan')):.3f} | {s['IS']:.2f} | {s['class_entropy']:.3f} | "
            f"{s['FID']:.0f} |"
        )
    ref = r["reference"]
    lines += [
        "",
        f"Real test digits: recognised {ref['recognised']:.3f} (digit-recognizer "
        f"{ref.get('recognised_strict', float('nan')):.3f}), IS {ref['IS']:.2f}, FID {ref['FID']:.0f}. The first 16 "
        "samples of each preset are a row of the .png beside this file, in the table's order.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names")
    ap.add_argument("--runs", type=Path, default=Path("runs/presets"))
    ap.add_argument(
        "--reuse", action="append", default=[], metavar="PRESET=RUN_DIR", help="score a run trained elsewhere"
    )
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=V", help="override every preset")
    ap.add_argument("--num", type=int, default=500)
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--sample-steps", type=int, default=100)
    ap.add_argument("--eta", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--tag", default="")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from mtdiff.build import load_data
    from mtdiff.config import load_config
    from mtdiff.evaluate import joint_images
    from mtdiff.metrics.quality import reference_stats
    from mtdiff.pretrained.images import load_image_features
    from mtdiff.runs import load_run
    from mtdiff.viz import save_grid

    presets = [p for p in args.presets.split(",") if p]
    reuse = parse_reuse(args.reuse)
    for p in [*presets, *reuse]:
        if not p.startswith("mnist-"):
            raise SystemExit(f"{p}: only MNIST presets are scored (their samples are digits); choose from {PRESETS}")
    test = load_data(load_config("mnist-ddpm"), "test")
    extractor, strict = load_image_features("mnist-cnn"), strict_classifier()
    ref = reference_stats(extractor, test, cache_dir=args.runs / "reference")
    records, rows = [], []
    for preset in presets:
        rec = train_preset(preset, reuse.get(preset, args.runs / preset), args.sets, args.quiet, reused=preset in reuse)
        t0 = time.perf_counter()
        run = load_run(rec["dir"])
        images = joint_images(
            run, args.num, batch=250, sampler=args.sampler, steps=args.sample_steps, eta=args.eta, seed=args.seed
        )
        rec["scores"] = score(images, extractor, ref, strict)
        rec["meets_goal"] = rec["scores"]["recognised"] >= GOAL
        rec["score_seconds"] = round(time.perf_counter() - t0, 1)
        records.append(rec)
        rows.append(images[:16])
        print(f"[presets] {preset}: recognised {rec['scores']['recognised']:.3f}", file=sys.stderr, flush=True)
    result = {
        "command": "python -m benchmarks.presets " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": machine("cpu"),
        "date": date.today().isoformat(),
        "num": args.num,
        "sampler": args.sampler,
        "sample_steps": args.sample_steps,
        "eta": args.eta,
        "confident": CONFIDENT,
        "goal": GOAL,
        "n_reference": int(ref["n"]),
        "reference": score(test.to_float(torch.arange(min(args.num, len(test)))), extractor, ref, strict),
        "presets": records,
    }
    stem = "presets" + (f"-{args.tag}" if args.tag else "")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out_dir / f"{stem}.md").write_text(markdown(result))
    if rows:
        save_grid(torch.cat(rows), args.out_dir / f"{stem}.png", nrow=16, captions=None)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
