"""The MT-Diffusion process: schedules, forward marginal, posterior, prior term. No nn.Module here."""

from .mt import MTProcess
from .prediction import PREDICTIONS, TIMESTEP_SAMPLINGS, WEIGHTINGS, Prediction
from .schedules import (
    AGGREGATIONS,
    Bridge,
    Constant,
    PaperRatio,
    aggregation_schedule,
    alpha_tilde_from_weights,
    beta_schedule,
    weights_from_alpha_tilde,
)

__all__ = [
    "MTProcess",
    "Prediction",
    "PREDICTIONS",
    "WEIGHTINGS",
    "TIMESTEP_SAMPLINGS",
    "beta_schedule",
    "aggregation_schedule",
    "AGGREGATIONS",
    "Bridge",
    "Constant",
    "PaperRatio",
    "alpha_tilde_from_weights",
    "weights_from_alpha_tilde",
]
