"""Training: the loop, EMA, checkpoints with exact resume."""
from .ema import EMA
from .trainer import Trainer, TrainingError, resolve_device

__all__ = ["Trainer", "TrainingError", "EMA", "resolve_device"]
