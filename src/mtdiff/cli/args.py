"""The arguments the commands share, declared and checked in one place.

Each ``add_*`` function declares a group of arguments on a subparser; the argparse types refuse a
value that can never work (a count below 1, a negative eta, a device this machine does not have, an
output file whose extension no image format has) with a usage line and exit code 2. What depends on
the run (steps past its schedule, a time index, guidance it was not trained for) is checked by the run
itself (:mod:`mtdiff.runs`), before any sampling.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..precision import PRECISIONS
from ..sampling.samplers import SAMPLERS

__all__ = [
    "positive_int",
    "nonnegative_int",
    "nonnegative_float",
    "positive_float",
    "device",
    "image_path",
    "add_run",
    "add_sampler",
    "add_seed",
    "add_device",
    "add_num",
    "add_out",
]


def _number(text: str, kind, what: str, ok) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(text, int, "a whole number >= 1", lambda v: v >= 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(text, int, "a whole number >= 0", lambda v: v >= 0)


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(text, float, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, float, "a finite number > 0", lambda v: math.isfinite(v) and v > 0)


def device(text: str) -> str:
    """argparse type: a device this machine has (cpu, cuda, cuda:N)."""
    from ..errors import InputError
    from ..runs import resolve_device

    try:
        resolve_device(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def image_path(text: str) -> Path:
    """argparse type: an output file whose extension names an image format Pillow can write (.png, .jpg, ...)."""
    from PIL import Image

    path = Path(text)
    formats = Image.registered_extensions()
    fmt = formats.get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise argparse.ArgumentTypeError(f"{text!r} needs an image file extension such as .png or .jpg")
    return path


def add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run",
        required=True,
        type=Path,
        help="run directory written by mtdiff train, or a shipped model's name (mtdiff models)",
    )


def add_device(p: argparse.ArgumentParser) -> None:
    """--device, and --precision: the autocast of the network's forward passes there."""
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="autocast of the network (the sampler's arithmetic stays fp32); auto: bf16 on a GPU or a CPU with "
        "native bf16 (default fp32)",
    )


def add_seed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0): same seed, same output")


def add_num(p: argparse.ArgumentParser, default: int | None, what: str) -> None:
    shown = "all" if default is None else default
    p.add_argument("--num", type=positive_int, default=default, help=f"{what} (default {shown})")


def add_out(p: argparse.ArgumentParser, what: str = "image grid") -> None:
    p.add_argument("--out", required=True, type=image_path, help=f"{what} to write (.png, .jpg, ...)")


def add_sampler(p: argparse.ArgumentParser) -> None:
    """--sampler, --steps, --eta: the run's ``sample`` config unless given."""
    p.add_argument(
        "--sampler", choices=SAMPLERS, default=None, help="sampler (default: the run's sample.sampler)"
    )  # the live registry: an entry added before parsing is a choice
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="sampler steps, at most the run's diffusion.timesteps (default: the run's sample.steps)",
    )
    p.add_argument(
        "--eta",
        type=nonnegative_float,
        default=None,
        help="DDIM noise: 0 deterministic, 1 ancestral-like (default: the run's sample.eta)",
    )
