"""The commands that train: train (a preset or YAML config, or --resume) and demo (the README's main job)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import InputError
from .args import positive_float, positive_int
from .common import print_memory_estimate

__all__ = ["add_parsers", "COMMANDS"]


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train a model from a preset or YAML config (Ctrl-C saves; --resume continues)")
    p.add_argument("--config", help="preset name or YAML path (optional with --resume: the run's own config)")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.steps=2000 (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("demo", help="train a small MT-Diffusion-X on MNIST on the CPU, then sample and restore")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default runs/demo; resumes)")
    p.add_argument(
        "--minutes",
        type=positive_float,
        default=3.5,
        help="training budget: the steps that fit, timed here, up to the preset's 2,700 (default 3.5, so that "
        "install, training, sampling and restoring take at most 10 minutes on 2 cores)",
    )
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (instead of --minutes)")
    p.add_argument(
        "--sample-steps",
        type=positive_int,
        default=None,
        help="sampler steps for the pictures (default: the preset's sample config, ancestral 250)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_train(args) -> int:
    from ..config import load_config
    from ..distributed import close_world
    from ..runs import read_run_config
    from ..train import Trainer

    if args.resume and args.config is None:
        cfg = read_run_config(args.out, args.overrides)
    elif args.config is None:
        raise InputError("--config is required (a preset name or a YAML file); see mtdiff presets")
    else:
        cfg = load_config(args.config, args.overrides)
    try:
        trainer = Trainer(cfg, args.out, resume=args.resume, progress=not args.quiet)
        metrics = trainer.run()
    finally:
        close_world()
    if trainer.world.main:
        print(json.dumps({"run": str(args.out), **metrics}))
    return 0


def cmd_demo(args) -> int:
    """The README's main job: train the mnist-demo preset on the CPU, then sample and restore; beside it, the
    same with the preset's converged weights shipped with mtdiff (where they are)."""
    from ..build import load_data
    from ..checkpoint import has_checkpoints
    from ..config import load_config
    from ..runs import load_run, read_run_config
    from ..shipped import shipped_names
    from ..train import Trainer, steps_for_minutes

    t0 = time.perf_counter()
    out = Path(args.out)
    resume = has_checkpoints(out)
    data = None
    if resume:  # the steps it was started with
        cfg = read_run_config(out, [f"train.steps={args.steps}"] if args.steps else [])
    elif args.steps:
        cfg = load_config("mnist-demo", [f"train.steps={args.steps}"])
    else:  # as many steps as fit in --minutes on this machine, at most the preset's
        cfg = load_config("mnist-demo")
        data = load_data(cfg, "train")
        fit, seconds = steps_for_minutes(cfg, args.minutes, data=data)
        print(
            f"[demo] {seconds * 1000:.0f} ms per training step here: {min(fit, cfg.train.steps)} of the preset's "
            f"{cfg.train.steps} steps fit in {args.minutes:g} minutes"
        )
        cfg = load_config("mnist-demo", [f"train.steps={min(fit, cfg.train.steps)}"])
    print(f"[demo] training {cfg.name} ({cfg.train.steps} steps) into {out}" + (" (resuming)" if resume else ""))
    Trainer(cfg, out, resume=resume, data=data, progress=not args.quiet).run()
    run = load_run(out)
    print_memory_estimate(run, 64, lambda n, **over: run.sample(n, **over))
    steps = {"steps": args.sample_steps} if args.sample_steps else {}
    test = load_data(run.config, "test")
    summary = {**_demo_pictures(run, test, out, "", steps), "steps_trained": run.step}
    if "mnist-demo" in shipped_names():  # the same preset trained to convergence, shipped: what it reaches
        shipped = load_run("mnist-demo")
        kw = {"steps": args.sample_steps} if args.sample_steps else SHIPPED_SAMPLER
        summary["shipped"] = {**_demo_pictures(shipped, test, out, "shipped_", kw), "steps_trained": shipped.step}
        print(
            f"[demo] beside your run ({run.step} steps): the same preset trained {shipped.step} steps, shipped with "
            f"mtdiff as `mnist-demo`: {out / 'shipped_samples.png'}"
        )
    summary["minutes"] = round((time.perf_counter() - t0) / 60, 2)
    (out / "demo.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


# The shipped model's pictures: 2.5x cheaper than the preset's ancestral 250 steps at about its quality (docs/
# RESULTS.md, "The sampler matters"), so that a slow fp32-only CPU still finishes within 10 minutes.
SHIPPED_SAMPLER = {"sampler": "ddim", "steps": 100, "eta": 1.0}


def _demo_pictures(run, test, out: Path, prefix: str, steps: dict) -> dict:
    """The demo's two pictures of ``run`` (64 samples from the complete mask; 16 test digits restored twice),
    saved as ``out/{prefix}samples.png`` and ``{prefix}restorations.png``, and the restorations' scores."""
    from ..evaluate import restoration_grid
    from ..viz import save_grid

    samples = save_grid(run.sample(64, seed=0, **steps).images, out / f"{prefix}samples.png", nrow=8)
    grid, ncol, stats = restoration_grid(run, test, num=16, per_input=2, seed=0, **steps)
    restorations = save_grid(grid, out / f"{prefix}restorations.png", nrow=ncol * 2)
    return {"samples": str(samples), "restorations": str(restorations), **stats}


COMMANDS = {"train": cmd_train, "demo": cmd_demo}
