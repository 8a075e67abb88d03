"""Noise (beta) schedules and aggregation (w) schedules, all in float64.

Paper time runs t = 1..T; here index ``i = t - 1`` runs over ``[0, T)``, so ``betas[i]`` is the
paper's beta_{i+1} and ``weights[i]`` its w_{i+1}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "beta_schedule",
    "alpha_tilde_from_weights",
    "weights_from_alpha_tilde",
    "Constant",
    "PaperRatio",
    "Bridge",
    "aggregation_schedule",
    "AGGREGATIONS",
]


def beta_schedule(name: str, num_timesteps: int) -> Tensor:
    """beta_t as float64 [T]. ``linear`` is DDPM's (scaled to T as in improved DDPM);
    ``cosine`` is Nichol & Dhariwal's squared-cosine alpha_bar, betas clipped at 0.999."""
    T = int(num_timesteps)
    if T < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {T}")
    if name == "linear":
        scale = 1000.0 / T
        return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
    if name == "cosine":
        s = 0.008
        f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = [min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {name!r}; valid: 'linear', 'cosine'")


def alpha_tilde_from_weights(alphas: Tensor, w: Tensor) -> Tensor:
    """Theorem 2 recursion: alpha~_t = sqrt(alpha_t) (w_t + alpha~_{t-1}), alpha~_0 = 0."""
    out = torch.empty_like(alphas)
    prev = torch.zeros((), dtype=alphas.dtype)
    for i in range(alphas.shape[0]):
        prev = alphas[i].sqrt() * (w[i] + prev)
        out[i] = prev
    return out


def weights_from_alpha_tilde(alphas: Tensor, alpha_tilde: Tensor) -> Tensor:
    """Inverse of the recursion: w_t = alpha~_t / sqrt(alpha_t) - alpha~_{t-1}."""
    prev = torch.cat([alpha_tilde.new_zeros(1), alpha_tilde[:-1]])
    return alpha_tilde / alphas.sqrt() - prev


@dataclass(frozen=True)
class Constant:
    """w_t = value for every t (``value = 0`` gives plain DDPM)."""

    value: float = 0.0

    def weights(self, alphas: Tensor) -> Tensor:
        return torch.full_like(alphas, float(self.value))


@dataclass(frozen=True)
class PaperRatio:
    """Appendix E's w_t = t / (T - t), made finite at t = T by using w_{T-1} there.

    Kept for fidelity only: alpha~ grows to the thousands (docs/DESIGN.md, paper error 2), so
    z_t ends as mostly E(x) and the prior N(0, I) is never reached.
    """

    def weights(self, alphas: Tensor) -> Tensor:
        T = alphas.shape[0]
        t = torch.arange(1, T + 1, dtype=torch.float64)
        return t / (T - t).clamp(min=1)


@dataclass(frozen=True)
class Bridge:
    """Given by its alpha~ profile: alpha~_t = gamma * sqrt(alpha_bar_t (1 - alpha_bar_t)).

    Then z_t = sqrt(ab_t) (z_0 + gamma sqrt(1 - ab_t) E) + sqrt(1 - ab_t) eps: the state leans
    from z_0 towards E as noise grows and z_T ~ N(0, I) whatever E is. w_t is derived from the
    profile and may be negative late in the chain (Eq. 3 allows any real w). The default.
    """

    gamma: float = 1.0

    def alpha_tilde(self, alphas: Tensor) -> Tensor:
        ab = torch.cumprod(alphas, 0)
        return self.gamma * (ab * (1 - ab)).sqrt()

    def weights(self, alphas: Tensor) -> Tensor:
        return weights_from_alpha_tilde(alphas, self.alpha_tilde(alphas))


AGGREGATIONS = {"bridge": Bridge, "constant": Constant, "paper": PaperRatio}


def aggregation_schedule(name: str, **params):
    """Build an aggregation schedule by name: ``bridge(gamma)``, ``constant(value)``, ``paper()``."""
    if name not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {name!r}; valid: {sorted(AGGREGATIONS)}")
    return AGGREGATIONS[name](**params)
