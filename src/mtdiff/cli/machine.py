"""The commands for a new machine or cluster: prepare-data (decode an image folder into the data cache once, and
with data.autoencoder encode its latents, before a torchrun job maps them) and check (every GPU path once,
PASS/FAIL/SKIP per section)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..errors import InputError
from .args import positive_int

__all__ = ["add_parsers", "COMMANDS"]


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "prepare-data",
        help="decode the config's image folder into the data cache (in parallel), once, before a torchrun job",
    )
    p.add_argument("--config", required=True, help="preset name or YAML path: the training run's")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="as in train")
    p.add_argument("--split", default="train", help="split to prepare (default train)")
    p.add_argument(
        "--workers", type=positive_int, default=os.cpu_count() or 1, help="decoding threads (default: every core)"
    )

    p = sub.add_parser("check", help="exercise every GPU path once (at most 8 minutes): PASS/FAIL/SKIP per section")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when there is one)")
    p.add_argument("--smoke", action="store_true", help="shrink every size and step count (CI on a CPU)")
    p.add_argument("--out", type=Path, default=Path("results/gpu-check"), help="folder of gpu_check.json")
    p.add_argument("--only", default=None, metavar="SECTION,...", help="run only these sections")
    p.add_argument("--wheels", type=Path, default=None, help="install missing optional packages from this folder")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check (default 480)")


def cmd_prepare_data(args) -> int:
    """Decode the folder of ``data`` once into the cache; later loads (every torchrun process) map it."""
    from ..build import load_data
    from ..config import load_config
    from ..data.cache import cache_dir

    cfg = load_config(args.config, args.overrides)
    d = cfg.data
    if d.source not in ("folder", "paired"):
        print(f"data.source={d.source!r} is loaded as it is: nothing to prepare")
        return 0
    if cache_dir(d.cache) is None:
        raise InputError("prepare-data writes the data cache, but data.cache is false; set data.cache=true or a path")
    data = load_data(cfg, args.split, workers=args.workers)
    print(f"{len(data)} images of {d.root} ({args.split}) in the data cache {cache_dir(d.cache)}; ready for torchrun")
    if d.autoencoder and d.latent_cache and args.split == "train":
        _prepare_latents(cfg, data)
    return 0


def _prepare_latents(cfg, data) -> None:
    """Encode the training images' latents into the data cache too (data.latent_cache), on train.device."""
    from ..build import build_space_map
    from ..data.cache import cache_dir
    from ..loading import resolve_device
    from ..train.latents import latent_sources, with_latents

    device = resolve_device(cfg.train.device, what="train.device")
    sources = latent_sources(cfg, data)
    latent = build_space_map(cfg, device)
    with_latents(data, latent, sources, directory=cache_dir(cfg.data.cache), device=device, progress=True)
    print(f"their VAE latents ({', '.join(sources)}) too, encoded on {device}")


def cmd_check(args) -> int:
    """``python -m mtdiff.cli.check`` in a child process (the check runs the other commands itself: no import cycle)."""
    argv = [sys.executable, "-m", "mtdiff.cli.check", "--out", str(args.out), "--budget", str(args.budget)]
    argv += [f"--device={args.device}"] if args.device else []
    argv += ["--smoke"] if args.smoke else []
    argv += ["--only", args.only] if args.only else []
    argv += ["--wheels", str(args.wheels)] if args.wheels else []
    return subprocess.call(argv)


COMMANDS = {"prepare-data": cmd_prepare_data, "check": cmd_check}
