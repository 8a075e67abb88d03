"""Training: the loop, EMA, checkpoints with exact resume."""
from .ema import EMA
from .trainer import Trainer, TrainingError, autocast_dtype, resolve_device

__all__ = ["Trainer", "TrainingError", "EMA", "autocast_dtype", "resolve_device"]
