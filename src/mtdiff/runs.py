"""A run directory: its resolved config, its checkpoints, and the trained model to sample from."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from .build import build_model, build_process, build_space_map
from .checkpoint import CheckpointError, load_checkpoint
from .config import Config, ConfigError, apply_overrides, from_dict, validate
from .models import MTModel
from .models.autoencoder import PixelMap, SpaceMap
from .process import MTProcess

__all__ = ["Run", "load_run", "read_run_config", "CONFIG_FILE"]

CONFIG_FILE = "config.yaml"


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


@dataclass
class Run:
    config: Config
    model: MTModel          # EMA weights, eval mode
    process: MTProcess
    step: int
    directory: Path
    latent: SpaceMap = field(default_factory=PixelMap)   # pixels <-> diffusion space (decode samples before saving)


def load_run(run_dir: str | Path, *, device: str | torch.device = "cpu", ema: bool = True, step: int | None = None) -> Run:
    """Load a trained run for inference (the EMA weights by default; the latest checkpoint, or ``step``'s)."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    ckpt = load_checkpoint(run_dir, step=step)
    model = build_model(cfg)
    weights = ckpt["ema" if ema else "model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt['dir']}: weights do not fit the model of {run_dir / CONFIG_FILE}: {e}") from None
    return Run(cfg, model.to(device).eval(), build_process(cfg), int(ckpt["meta"]["step"]), run_dir,
               build_space_map(cfg, device))
