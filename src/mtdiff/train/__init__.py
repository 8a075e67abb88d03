"""Training: the loop, EMA, checkpoints with exact resume."""

from .budget import steps_for_minutes
from .ema import EMA
from .trainer import Trainer, TrainingError, TrainingInterrupted, autocast_dtype

__all__ = ["Trainer", "TrainingError", "TrainingInterrupted", "EMA", "autocast_dtype", "steps_for_minutes"]
