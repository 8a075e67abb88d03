"""What the network predicts, and how the loss weights the noise levels.

Everything happens on the y-chain y_t = z_t - m_t = sqrt(ab_t) y_0 + sqrt(1 - ab_t) eps (with
y_0 = z_0), so each parameterisation is the DDPM one applied to y:

- ``eps``: the noise (Eq. 6 as printed, and Algorithm 1);
- ``x0``: y_0 = z_0 itself;
- ``v``: v = sqrt(ab_t) eps - sqrt(1 - ab_t) y_0 (Salimans & Ho, 2022).

Samplers and guidance always receive eps: :meth:`Prediction.eps` converts. The loss is the mean
squared error in the parameterisation's own space, times a weight per sample. Written as a weight on
the eps error, the three spaces differ: ||x0 - x0_hat||^2 = ||eps - eps_hat||^2 / SNR_t and
||v - v_hat||^2 = ||eps - eps_hat||^2 (1 + SNR_t) / SNR_t, SNR_t = ab_t / (1 - ab_t). ``min-snr``
(Hang et al., 2023) weights every parameterisation so that the eps error counts min(SNR_t, gamma) / SNR_t.

The time indices of a batch are drawn uniformly (Algorithm 2) or ``stratified``: one shared uniform
offset u and t_i = floor(T ((u + i / B) mod 1)), shuffled, so every row is still uniform on {0..T-1}
(the loss keeps its expectation) while the batch covers the noise levels evenly (the low-discrepancy
sampler of Kingma et al., 2021), which lowers the variance of the gradient. ``log-normal`` changes
the objective instead: it draws the noise level sigma_t = sqrt((1 - ab_t) / ab_t) of the y-chain
(y_t / sqrt(ab_t) = y_0 + sigma_t eps, EDM's sigma; Karras et al., 2022) from ln sigma ~ N(mean, std^2),
binned to the time index whose ln sigma_t is nearest, so training spends its batches around sigma = e^mean
(with EDM's -1.2 and 1.2 on the linear schedule, half of them on t < 100). With ``v`` and ``uniform``
weighting the eps error of level t counts 1 + sigma_t^2, EDM's weighting lambda(sigma) for sigma_data = 1:
together, EDM's objective on a discrete VP schedule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from .mt import MTProcess

__all__ = ["Prediction", "PREDICTIONS", "WEIGHTINGS", "TIMESTEP_SAMPLINGS"]

PREDICTIONS = ("eps", "v", "x0")
WEIGHTINGS = ("uniform", "min-snr")
TIMESTEP_SAMPLINGS = ("uniform", "stratified", "log-normal")


def snr(ab: Tensor) -> Tensor:
    """SNR_t = ab_t / (1 - ab_t) of the y-chain; EDM's sigma_t is SNR_t^(-1/2)."""
    return ab / (1 - ab)


@dataclass(frozen=True)
class Prediction:
    """The network's output space (``kind``) and the loss weighting, on ``process``'s schedule."""

    process: MTProcess
    kind: str = "eps"
    weighting: str = "uniform"
    snr_gamma: float = 5.0
    timestep_sampling: str = "uniform"
    lognormal_mean: float = -1.2  # log-normal: mean and std of ln sigma (EDM's P_mean, P_std)
    lognormal_std: float = 1.2

    def __post_init__(self):
        if self.kind not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.kind!r}; valid: {list(PREDICTIONS)}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {self.weighting!r}; valid: {list(WEIGHTINGS)}")
        if self.timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ValueError(f"unknown timestep sampling {self.timestep_sampling!r}; valid: {list(TIMESTEP_SAMPLINGS)}")
        if not self.lognormal_std > 0:
            raise ValueError(f"the log-normal std must be > 0, got {self.lognormal_std}")

    def level_probs(self, device=None) -> Tensor:
        """P(t) [T] of ``log-normal`` sampling: the N(mean, std^2) mass of ln sigma between the midpoints of
        neighbouring ln sigma_t (the ends open), sigma_t = sqrt((1 - ab_t) / ab_t) increasing in t."""
        log_sigma = -0.5 * snr(self.process.alphas_cumprod.to(device=device, dtype=torch.float64)).log()
        cdf = torch.special.ndtr(((log_sigma[1:] + log_sigma[:-1]) / 2 - self.lognormal_mean) / self.lognormal_std)
        return torch.diff(cdf, prepend=cdf.new_zeros(1), append=cdf.new_ones(1))

    def timesteps(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Time indices [batch] for one training batch: each uniform on {0, ..., T-1} (``uniform``,
        ``stratified``) or drawn from :meth:`level_probs` (``log-normal``)."""
        T = self.process.num_timesteps
        if self.timestep_sampling == "uniform":
            return torch.randint(0, T, (batch,), generator=generator, device=device)
        if self.timestep_sampling == "log-normal":
            return torch.multinomial(self.level_probs(device), batch, replacement=True, generator=generator)
        u = torch.rand(1, generator=generator, device=device, dtype=torch.float64)
        u = (u + torch.arange(batch, device=device, dtype=torch.float64) / batch) % 1
        order = torch.randperm(batch, generator=generator, device=device)
        return (u[order] * T).long().clamp_(max=T - 1)

    def _ab(self, t: Tensor, like: Tensor) -> Tensor:
        return self.process._at(self.process.alphas_cumprod, t, like)

    def target(self, z0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network should output for z_t built from (z_0, eps) at time index t."""
        if self.kind == "eps":
            return noise
        if self.kind == "x0":
            return z0
        ab = self._ab(t, z0)
        return ab.sqrt() * noise - (1 - ab).sqrt() * z0  # v

    def eps_and_z0(self, out: Tensor, y: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(eps, y_0) from the network output ``out`` and y_t: the inverse of y_t = sqrt(ab) y_0 + sqrt(1 - ab) eps."""
        ab = self._ab(t, y)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        if self.kind == "eps":
            return out, (y - s * out) / a
        if self.kind == "x0":
            return (y - a * out) / s, out
        return s * y + a * out, a * y - s * out  # v: a^2 + s^2 = 1

    def eps(self, out: Tensor, zt: Tensor, t: Tensor, enc: Mapping[str, Tensor]) -> Tensor:
        """eps from the network output at z_t, with the shift m_t of the encodings that formed z_t."""
        if self.kind == "eps":
            return out
        return self.eps_and_z0(out, zt - self.process.shift(t, enc, zt), t)[0]

    def weight(self, t: Tensor) -> Tensor:
        """Per-sample loss weight [B] in the parameterisation's own space (1 for ``uniform``)."""
        if self.weighting == "uniform":
            return torch.ones(t.shape, dtype=torch.float32, device=t.device)
        ratio = snr(self._ab(t, torch.empty(t.shape, dtype=torch.float64, device=t.device)))
        clipped = ratio.clamp(max=self.snr_gamma)
        per_space = {"eps": clipped / ratio, "v": clipped / (ratio + 1), "x0": clipped}[self.kind]
        return per_space.float()
