"""The layout of a run directory, in one place: what ``mtdiff train`` writes and every reader looks for.

RUN/config.yaml          the resolved config
RUN/log.jsonl            one JSON object per line: the training metrics every train.log_every steps
RUN/checkpoints/         ckpt-<n>/{model,ema,state}.safetensors + meta.json, latest.json (mtdiff.checkpoint)
RUN/samples/step-*.png   sample grids every train.sample_every steps
RUN/tb/                  TensorBoard events

:func:`read_run_config` and :func:`read_log` read the config and the log back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .config import Config, ConfigError, apply_overrides, from_dict, validate

__all__ = [
    "CONFIG_FILE",
    "LOG_FILE",
    "CHECKPOINTS_DIR",
    "SAMPLES_DIR",
    "TB_DIR",
    "checkpoints_dir",
    "read_run_config",
    "read_log",
]

CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
CHECKPOINTS_DIR = "checkpoints"
SAMPLES_DIR = "samples"
TB_DIR = "tb"


def checkpoints_dir(run_dir: str | Path) -> Path:
    """The folder of a run's checkpoints."""
    return Path(run_dir) / CHECKPOINTS_DIR


def read_run_config(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The resolved config saved in a run directory, with optional overrides."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{path} not found: {run_dir} is not an mtdiff run directory (made by mtdiff train)")
    raw = yaml.safe_load(path.read_text()) or {}
    raw = apply_overrides(raw, list(overrides or []))
    try:
        return validate(from_dict(Config, raw))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The entries of a run's training log, in order ([] when it has none); a line cut short by a kill is
    skipped."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries
