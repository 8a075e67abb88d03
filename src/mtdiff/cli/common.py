"""What the commands share: a run loaded from ``--run``/``--device``, its sampler options, the memory
estimate printed before sampling, and user PNG files read as images, class maps or known-pixel masks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ..errors import InputError, MtdiffError
from ..runs import Run, load_run

__all__ = [
    "load",
    "sampler_options",
    "print_memory_estimate",
    "png_files",
    "read_images",
    "read_class_maps",
    "read_keep",
    "emit",
]


def load(args) -> Run:
    """The run of ``--run`` on ``--device`` at ``--precision`` (its EMA weights, latest checkpoint)."""
    return load_run(args.run, device=args.device, precision=args.precision)


def sampler_options(args) -> dict:
    """``--sampler/--steps/--eta/--seed`` as keyword arguments of the run's methods (None: the run's config)."""
    return {"sampler": args.sampler, "steps": args.steps, "eta": args.eta, "seed": args.seed}


def print_memory_estimate(run: Run, batch: int, sample) -> None:
    """Print, before sampling, what sampling ``batch`` at once will hold (:mod:`mtdiff.memory`).
    ``sample(n, **overrides)`` is the command's own sampling call, already checked with its real arguments."""
    from ..memory import estimate_sampling_memory, module_bytes

    def probe(n):
        return sample(n, steps=3, seed=0)

    try:  # advisory: it never keeps the command from running, but a user error is the real call's
        summary = estimate_sampling_memory(
            probe, weights=module_bytes(run.model), batch=batch, device=run.device
        ).summary()
    except MtdiffError:
        raise
    except Exception as e:
        summary = f"no memory estimate ({type(e).__name__}: {e})"
    print(summary, file=sys.stderr, flush=True)


def emit(result: dict) -> int:
    """Print a command's result as one JSON line; exit code 0."""
    print(json.dumps(result))
    return 0


def png_files(path: Path, flag: str) -> list[Path]:
    """The PNG file ``path``, or the PNG files in the folder ``path`` (sorted)."""
    files = sorted(path.glob("*.png")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise InputError(f"{flag} {path}: no PNG file there")
    return files


def read_images(run: Run, files: list[Path], flag: str = "--input") -> torch.Tensor:
    """Images [N, C, H, W] in [-1, 1] from PNG files; each must be the run's size."""
    from ..viz import load_image

    d = run.config.data
    try:
        return torch.cat([load_image(f, size=d.image_size, channels=d.channels) for f in files])
    except ValueError as e:
        raise InputError(f"{flag}: {e}") from None


def read_class_maps(run: Run, name: str, files: list[Path]) -> torch.Tensor:
    """Class maps [N, H, W] (pixel value = class index) for segmentation modality ``name``."""
    from ..viz import load_class_map

    mod, size = run.model.modalities[name], run.config.data.image_size
    try:
        return torch.cat([load_class_map(f, size=size, num_classes=mod.num_classes) for f in files])
    except ValueError as e:
        raise InputError(f"--input: {e}") from None


def read_keep(run: Run, path: Path, inputs: list[Path]) -> torch.Tensor:
    """Known-pixel masks [N, 1, H, W] (white = known) for the --input files, one per image, same size."""
    from ..viz import load_image

    files = [path / f.name for f in inputs] if path.is_dir() else [path] * len(inputs)
    masks = []
    for f in files:
        if not f.is_file():
            raise InputError(f"--keep {path}: no mask {f.name} for --input image {f.name}")
        try:
            masks.append((load_image(f, size=run.config.data.image_size, channels=1) > 0).float())
        except ValueError as e:
            raise InputError(f"--keep: {e}") from None
    return torch.cat(masks)
