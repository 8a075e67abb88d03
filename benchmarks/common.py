"""What every benchmark shares: where results go, the machine they ran on, the seeds they take."""

from __future__ import annotations

import argparse
import os
import platform
import re
from pathlib import Path

import torch

__all__ = ["RESULTS", "machine", "seed_list", "slug", "where_run"]

RESULTS = Path(__file__).parent / "results"


def machine(device) -> dict:
    """Platform, CPU, threads, torch version and the device's name."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": name,
    }


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
