"""Training: the loop, EMA, checkpoints with exact resume."""

from .ema import EMA
from .trainer import Trainer, TrainingError, TrainingInterrupted, autocast_dtype

__all__ = ["Trainer", "TrainingError", "TrainingInterrupted", "EMA", "autocast_dtype"]
