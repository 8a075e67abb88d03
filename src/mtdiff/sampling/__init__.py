"""Samplers (pure functions on the y-chain) and the joint / conditional / inverse modes."""

from .given import (
    KnownPixels,
    NullInputs,
    Restoration,
    drift,
    generate_given,
    generate_joint,
    head_estimates,
    inverse,
    read_heads,
    restore,
    split_unknown,
)
from .guidance import ClassifierFreeGuidance, HeadGuidance
from .samplers import (
    SAMPLERS,
    Denoiser,
    Sampler,
    SampleState,
    ancestral,
    ddim,
    dpm_solver,
    init_state,
    sampler_named,
    timesteps,
)
from .tasks import elbo_logits, elbo_timesteps, generate, generate_conditional

__all__ = [
    "ClassifierFreeGuidance",
    "HeadGuidance",
    "KnownPixels",
    "NullInputs",
    "generate_given",
    "head_estimates",
    "read_heads",
    "drift",
    "split_unknown",
    "SAMPLERS",
    "Sampler",
    "sampler_named",
    "Denoiser",
    "SampleState",
    "ancestral",
    "ddim",
    "dpm_solver",
    "init_state",
    "timesteps",
    "generate",
    "generate_joint",
    "generate_conditional",
    "restore",
    "inverse",
    "Restoration",
    "elbo_logits",
    "elbo_timesteps",
]
