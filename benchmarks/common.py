"""What every benchmark shares: where results go, the machine they ran on, the seeds they take."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from mtdiff.cli.check.common import machine  # noqa: F401  (the benchmarks' record of where they ran)

__all__ = ["RESULTS", "machine", "seed_list", "slug", "where_run"]

RESULTS = Path(__file__).parent / "results"


def where_run(m: dict, date: str | None) -> str:
    """A result's provenance in words: the device of ``machine``'s record, its CPUs and torch, and the day."""
    return f"{m['device_name']} ({m['cpu_count']} CPUs, torch {m['torch']})" + (f", {date}" if date else "")


def seed_list(text: str) -> list[int]:
    """``--seeds 0,1,2`` -> [0, 1, 2] (distinct integers), for argparse."""
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text!r}")
    return seeds


def slug(text: str) -> str:
    """A file-name-safe form of a device name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
