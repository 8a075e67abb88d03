"""``mtdiff evaluate``: sample quality of a trained run (FID, sFID, KID, IS, precision, recall).

Draws N joint samples from the run's EMA model and scores them against the whole test split with a
frozen feature extractor; the reference features are cached under ``RUN/eval/`` so later evaluations
only pay for sampling.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .args import add_device, add_run, add_sampler, add_seed, positive_int

__all__ = ["add_parsers", "cmd_evaluate", "default_extractor", "COMMANDS"]


def add_parsers(sub) -> None:
    """Register the ``evaluate`` subcommand on the subparsers ``sub``."""
    p = sub.add_parser("evaluate", help="sample quality (FID, sFID, KID, IS, precision/recall) against the test split")
    add_run(p)
    p.add_argument("--num", type=positive_int, default=1000, help="samples to generate and score, >= 2 (default 1000)")
    p.add_argument(
        "--features",
        default=None,
        metavar="NAME",
        help="feature extractor: mnist-cnn, efficientnet-lite0 or inception (the standard FID network, "
        "needs --weights); default mnist-cnn for 1-channel 32 px data, else efficientnet-lite0",
    )
    p.add_argument("--weights", default=None, metavar="PATH", help="weights file of the extractor (inception)")
    p.add_argument("--batch", type=positive_int, default=250, help="samples per sampling batch (default 250)")
    add_sampler(p)
    add_seed(p)
    p.add_argument("--ref-num", type=positive_int, default=None, help="use only the first N test images (default: all)")
    add_device(p)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON file to write (default RUN/eval/quality-<features>-n<N>-steps<S>-seed<seed>.json)",
    )


def default_extractor(channels: int, image_size: int) -> str:
    """mnist-cnn for MNIST-like data (1 channel, 32 px), efficientnet-lite0 otherwise."""
    return "mnist-cnn" if (channels, image_size) == (1, 32) else "efficientnet-lite0"


def _samples(run, opts: dict, steps: int, num: int, batch: int, seed: int, world):
    """``num`` joint samples [num, C, H, W] in pixels (decoded from latents for autoencoder runs), on the CPU.

    Batch b is drawn with its own seed, (seed, b), and the batches are shared out over the torchrun
    processes: any number of processes makes the same images.
    """
    import torch
    from tqdm.auto import tqdm

    from ..distributed import shard

    starts = list(range(0, num, batch))
    d = run.config.data
    out = [torch.empty(0, d.channels, d.image_size, d.image_size)]
    mine = shard(len(starts), world)
    with tqdm(
        total=len(mine) * steps, desc="sample", unit="step", disable=not world.main, dynamic_ncols=True
    ) as bar:  # moves with every sampler step
        for i in mine:
            n = min(batch, num - starts[i])
            images = run.sample(n, **{**opts, "seed": seed * 1_000_003 + i}, callback=lambda *_: bar.update()).images
            out.append(images.float().cpu())
    return world.gather(torch.cat(out).to(run.device)).cpu()


def _table(scores: dict, real: dict) -> str:
    """The scores of the samples beside those of as many real training images (the best a model can do)."""
    rows = [(k, v) for k, v in scores.items() if isinstance(v, float)]
    width = max(len(k) for k, _ in rows)
    head = f"{'':<{width}}  {'samples':>10}  {'real images':>11}"
    return "\n".join([head] + [f"{k:<{width}}  {v:>10.4f}  {real.get(k, float('nan')):>11.4f}" for k, v in rows])


def cmd_evaluate(args) -> int:
    import torch

    from ..build import load_data
    from ..data.imageset import ImageSet
    from ..distributed import close_world, init_world
    from ..errors import InputError
    from ..metrics.quality import sample_quality
    from ..pretrained.images import load_image_features
    from .common import load, print_memory_estimate, sampler_options

    if args.num < 2:
        raise InputError(f"--num must be >= 2 (a covariance needs two samples), got {args.num}")
    t0 = time.perf_counter()
    world, args.device = init_world(args.device)  # under torchrun: this process's share and device
    run = load(args)
    opts = sampler_options(args)
    kw = run.sampler_kwargs(**opts)
    name = args.features or default_extractor(run.config.data.channels, run.config.data.image_size)
    extractor = load_image_features(name, args.device, **({"weights": args.weights} if args.weights else {}))
    ref = load_data(run.config, "test")
    if args.ref_num is not None:
        ref = ImageSet(ref.images[: args.ref_num], None, ref.class_names, ref.name)
    if world.main:
        print_memory_estimate(run, min(args.batch, args.num), lambda n, **over: run.sample(n, **{**opts, **over}))
    try:
        images = _samples(run, opts, kw["steps"], args.num, args.batch, args.seed, world)
    finally:
        close_world()
    if not world.main:
        return 0
    t1 = time.perf_counter()
    scores = sample_quality(images, ref, extractor, seed=args.seed, cache_dir=run.output_dir / "eval")
    train_set = load_data(run.config, "train")  # the reference point: real images scored the same way
    idx = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed))[: args.num]
    real = sample_quality(train_set.to_float(idx), ref, extractor, seed=args.seed, cache_dir=run.output_dir / "eval")
    result = {
        "run": str(args.run),
        "step": run.step,
        **scores,
        "reference": ref.name,
        "steps": kw["steps"],
        "sampler": kw["sampler"],
        "eta": kw["eta"],
        "seed": args.seed,
        "real_train_images": {k: v for k, v in real.items() if isinstance(v, (int, float))},
        "seconds_sampling": round(t1 - t0, 1),
        "seconds_scoring": round(time.perf_counter() - t1, 1),
    }
    out = args.out or run.output_dir / "eval" / f"quality-{name}-n{args.num}-steps{kw['steps']}-seed{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(_table(scores, real))
    print(
        f"{result['n']} samples ({kw['sampler']}, {kw['steps']} steps) vs {result['n_reference']} "
        f"{ref.name} images, {extractor.label}, beside {len(idx)} real training images; written to {out}"
    )
    return 0


COMMANDS = {"evaluate": cmd_evaluate}
