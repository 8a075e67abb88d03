"""Samplers (pure functions on the y-chain) and the joint / conditional / inverse modes."""

from .given import KnownPixels, NullInputs, generate_given, generate_joint, read_heads, split_unknown
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
from .tasks import (
    Restoration,
    elbo_logits,
    elbo_timesteps,
    generate,
    generate_conditional,
    inverse,
    restore,
)

__all__ = [
    "ClassifierFreeGuidance",
    "HeadGuidance",
    "KnownPixels",
    "NullInputs",
    "generate_given",
    "read_heads",
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
