"""``mtdiff evaluate``: sample quality of a trained run (FID, sFID, KID, IS, precision, recall).

Draws N joint samples from the run's EMA model and scores them against the whole test split with a
frozen feature extractor; the reference features are cached under ``RUN/eval/`` so later evaluations
only pay for sampling.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..config import SAMPLER_NAMES
from .args import positive_int

__all__ = ["add_evaluate_parser", "cmd_evaluate", "default_extractor"]


def add_evaluate_parser(sub) -> argparse.ArgumentParser:
    """Register the ``evaluate`` subcommand on the subparsers ``sub``."""
    p = sub.add_parser("evaluate", help="sample quality (FID, sFID, KID, IS, precision/recall) against the test split")
    p.add_argument("--run", required=True, type=Path, help="run directory written by mtdiff train")
    p.add_argument("--num", type=int, default=1000, help="samples to generate and score (default 1000)")
    p.add_argument("--features", default=None, metavar="NAME",
                   help="feature extractor: mnist-cnn, efficientnet-lite0 or inception (the standard FID network, "
                        "needs --weights); default mnist-cnn for 1-channel 32 px data, else efficientnet-lite0")
    p.add_argument("--weights", default=None, metavar="PATH", help="weights file of the extractor (inception)")
    p.add_argument("--batch", type=int, default=250, help="samples per sampling batch (default 250)")
    p.add_argument("--steps", type=positive_int, default=None, help="sampler steps (default: the run's sample.steps)")
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default=None, help="default: the run's sample.sampler")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref-num", type=int, default=None, help="use only the first N test images (default: all)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file to write (default RUN/eval/quality-<features>-n<N>-steps<S>-seed<seed>.json)")
    return p


def default_extractor(channels: int, image_size: int) -> str:
    """mnist-cnn for MNIST-like data (1 channel, 32 px), efficientnet-lite0 otherwise."""
    return "mnist-cnn" if (channels, image_size) == (1, 32) else "efficientnet-lite0"


def _samples(run, kw: dict, num: int, batch: int, seed: int, world):
    """``num`` joint samples [num, C, H, W] in pixels (decoded from latents for autoencoder runs), on the CPU.

    Batch b is drawn with its own generator, seeded by (seed, b), and the batches are shared out over
    the torchrun processes: any number of processes makes the same images.
    """
    import torch
    from tqdm.auto import tqdm

    from ..distributed import shard
    from ..evaluate import joint_images

    starts = list(range(0, num, batch))
    d = run.config.data
    out = [torch.empty(0, d.channels, d.image_size, d.image_size)]
    for i in tqdm(shard(len(starts), world), desc="sample", disable=not world.main, dynamic_ncols=True):
        n = min(batch, num - starts[i])
        out.append(joint_images(run, n, batch=n, **{**kw, "generator": torch.Generator(kw["device"]).manual_seed(
            seed * 1_000_003 + i)}))
    mine = torch.cat(out)
    return world.gather(mine.to(kw["device"])).cpu()


def _table(result: dict) -> str:
    rows = [(k, v) for k, v in result.items() if isinstance(v, float)]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v:.4f}" for k, v in rows)


def cmd_evaluate(args) -> int:
    from ..config import ConfigError
    from ..data.sources import ImageSet
    from ..distributed import close_world, init_world
    from ..evaluate import joint_images
    from ..metrics.quality import sample_quality
    from ..pretrained.images import load_image_features
    from ..train.trainer import load_data
    from .main import _load, _print_memory_estimate

    if args.num < 2 or args.batch < 1:
        raise ConfigError(f"--num must be >= 2 and --batch >= 1, got {args.num} and {args.batch}")
    t0 = time.perf_counter()
    world, args.device = init_world(args.device)      # under torchrun: this process's share and device
    run, kw = _load(args)
    name = args.features or default_extractor(run.config.data.channels, run.config.data.image_size)
    extractor = load_image_features(name, args.device, **({"weights": args.weights} if args.weights else {}))
    ref = load_data(run.config, "test")
    if args.ref_num is not None:
        ref = ImageSet(ref.images[:args.ref_num], None, ref.class_names, ref.name)
    if world.main:
        _print_memory_estimate(run, min(args.batch, args.num),
                               lambda n, **over: joint_images(run, n, batch=n, **{**kw, **over}), args.device)
    try:
        images = _samples(run, kw, args.num, args.batch, args.seed, world)
    finally:
        close_world()
    if not world.main:
        return 0
    t1 = time.perf_counter()
    scores = sample_quality(images, ref, extractor, seed=args.seed, cache_dir=run.directory / "eval")
    result = {"run": str(args.run), "step": run.step, **scores, "reference": ref.name, "steps": kw["steps"],
              "sampler": kw["sampler"], "eta": kw["eta"], "seed": args.seed,
              "seconds_sampling": round(t1 - t0, 1), "seconds_scoring": round(time.perf_counter() - t1, 1)}
    out = args.out or run.directory / "eval" / f"quality-{name}-n{args.num}-steps{kw['steps']}-seed{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(_table(scores))
    print(f"{result['n']} samples ({kw['sampler']}, {kw['steps']} steps) vs {result['n_reference']} "
          f"{ref.name} images, {extractor.label}; written to {out}")
    return 0
