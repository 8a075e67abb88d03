"""The layout of a run directory, in one place: what ``mtdiff train`` writes and every reader looks for.

RUN/config.yaml          the resolved config
RUN/log.jsonl            one JSON object per line: the training metrics every train.log_every steps
RUN/checkpoints/         ckpt-<n>/{model,ema,state}.safetensors + meta.json, latest.json (mtdiff.checkpoint)
RUN/samples/step-*.png   sample grids every train.sample_every steps
RUN/tb/                  TensorBoard events
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONFIG_FILE", "LOG_FILE", "CHECKPOINTS_DIR", "SAMPLES_DIR", "TB_DIR", "checkpoints_dir"]

CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
CHECKPOINTS_DIR = "checkpoints"
SAMPLES_DIR = "samples"
TB_DIR = "tb"


def checkpoints_dir(run_dir: str | Path) -> Path:
    """The folder of a run's checkpoints."""
    return Path(run_dir) / CHECKPOINTS_DIR
