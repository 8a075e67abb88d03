"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

__all__ = ["machine", "slug"]


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


def slug(text: str) -> str:
    """A file-name-safe form of a device name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
