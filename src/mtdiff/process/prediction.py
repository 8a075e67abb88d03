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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .mt import MTProcess

__all__ = [
    "Prediction",
    "OutputSpace",
    "Weighting",
    "TimestepSampling",
    "PREDICTIONS",
    "WEIGHTINGS",
    "TIMESTEP_SAMPLINGS",
    "z0_from_eps",
    "eps_from_z0",
]


def snr(ab: Tensor) -> Tensor:
    """SNR_t = ab_t / (1 - ab_t) of the y-chain; EDM's sigma_t is SNR_t^(-1/2)."""
    return ab / (1 - ab)


# ---------------------------------------------------------------------------- output spaces
# On y_t = a y_0 + s eps with a = sqrt(ab_t), s = sqrt(1 - ab_t) (a^2 + s^2 = 1); a and s are tensors that
# broadcast against y, or Python floats.


@dataclass(frozen=True)
class OutputSpace:
    """What the network outputs on the y-chain: ``target(y0, eps, a, s)`` is the exact output,
    ``invert(out, y, a, s)`` gives (eps, y0) back, and ``eps_weight(snr)`` is c_t with
    ||out - target||^2 = c_t ||eps_hat - eps||^2 (its uniform loss as a weighting of Eq. 6's eps error)."""

    target: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    invert: Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
    eps_weight: Callable[[Tensor], Tensor]
    is_eps: bool = False  # the output is eps itself: no conversion, no shift needed


def _from_eps(out, y, a, s):
    return out, (y - s * out) / a


def _from_x0(out, y, a, s):
    return (y - a * out) / s, out


def _from_v(out, y, a, s):
    return s * y + a * out, a * y - s * out  # a^2 + s^2 = 1


PREDICTIONS: dict[str, OutputSpace] = {
    "eps": OutputSpace(lambda y0, eps, a, s: eps, _from_eps, torch.ones_like, is_eps=True),
    "v": OutputSpace(lambda y0, eps, a, s: a * eps - s * y0, _from_v, lambda r: (1 + r) / r),  # Salimans & Ho
    "x0": OutputSpace(lambda y0, eps, a, s: y0, _from_x0, lambda r: 1 / r),
}
"""The network's output spaces by name (``diffusion.prediction``)."""


def z0_from_eps(eps: Tensor, y: Tensor, a, s) -> Tensor:
    """y_0 = (y_t - s eps) / a: the inverse of y_t = a y_0 + s eps for y_0."""
    return _from_eps(eps, y, a, s)[1]


def eps_from_z0(z0: Tensor, y: Tensor, a, s) -> Tensor:
    """eps = (y_t - a y_0) / s: the inverse of y_t = a y_0 + s eps for eps."""
    return _from_x0(z0, y, a, s)[0]


# ---------------------------------------------------------------------------- loss weightings


@dataclass(frozen=True)
class Weighting:
    """A loss weighting: ``eps_weight(snr, prediction)`` is what the eps error of level t counts, or None for
    the output space's own uniform loss (weight 1 in its space). ``options``: the Prediction fields it reads."""

    eps_weight: Callable[[Tensor, Prediction], Tensor] | None
    options: tuple[str, ...] = ()


WEIGHTINGS: dict[str, Weighting] = {
    "uniform": Weighting(None),  # Eq. 6 as printed
    "min-snr": Weighting(lambda r, p: r.clamp(max=p.snr_gamma) / r, ("snr_gamma",)),  # Hang et al., 2023
}
"""Loss weightings by name (``diffusion.loss_weighting``)."""


# ---------------------------------------------------------------------------- timestep samplings


def _uniform_t(pred: Prediction, batch: int, generator, device) -> Tensor:
    return torch.randint(0, pred.process.num_timesteps, (batch,), generator=generator, device=device)


def _stratified_t(pred: Prediction, batch: int, generator, device) -> Tensor:
    T = pred.process.num_timesteps
    u = torch.rand(1, generator=generator, device=device, dtype=torch.float64)
    u = (u + torch.arange(batch, device=device, dtype=torch.float64) / batch) % 1
    order = torch.randperm(batch, generator=generator, device=device)
    return (u[order] * T).long().clamp_(max=T - 1)


def _lognormal_t(pred: Prediction, batch: int, generator, device) -> Tensor:
    return torch.multinomial(pred.level_probs(device), batch, replacement=True, generator=generator)


@dataclass(frozen=True)
class TimestepSampling:
    """How a training batch draws its time indices: ``draw(prediction, batch, generator, device)`` -> [batch].
    ``options``: the Prediction fields it reads."""

    draw: Callable[[Prediction, int, torch.Generator | None, object], Tensor]
    options: tuple[str, ...] = ()


TIMESTEP_SAMPLINGS: dict[str, TimestepSampling] = {
    "uniform": TimestepSampling(_uniform_t),  # Algorithm 2
    "stratified": TimestepSampling(_stratified_t),
    "log-normal": TimestepSampling(_lognormal_t, ("lognormal_mean", "lognormal_std")),  # EDM's
}
"""Timestep samplings by name (``diffusion.timestep_sampling``)."""


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
    _probs: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # device -> level_probs

    def __post_init__(self):
        for what, value, registry in (
            ("prediction", self.kind, PREDICTIONS),
            ("loss weighting", self.weighting, WEIGHTINGS),
            ("timestep sampling", self.timestep_sampling, TIMESTEP_SAMPLINGS),
        ):
            if value not in registry:
                raise ValueError(f"unknown {what} {value!r}; valid: {list(registry)}")
        if not self.lognormal_std > 0:
            raise ValueError(f"the log-normal std must be > 0, got {self.lognormal_std}")

    def level_probs(self, device=None) -> Tensor:
        """P(t) [T] of ``log-normal`` sampling: the N(mean, std^2) mass of ln sigma between the midpoints of
        neighbouring ln sigma_t (the ends open), sigma_t = sqrt((1 - ab_t) / ab_t) increasing in t. Computed on
        the host once and copied to each device once (a copy per training step would wait for the device)."""
        device = torch.device(device or "cpu")
        if device not in self._probs:
            log_sigma = -0.5 * snr(self.process.alphas_cumprod.to(torch.float64)).log()
            cdf = torch.special.ndtr(((log_sigma[1:] + log_sigma[:-1]) / 2 - self.lognormal_mean) / self.lognormal_std)
            self._probs[device] = torch.diff(cdf, prepend=cdf.new_zeros(1), append=cdf.new_ones(1)).to(device)
        return self._probs[device]

    def timesteps(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Time indices [batch] for one training batch: each uniform on {0, ..., T-1} (``uniform``,
        ``stratified``) or drawn from :meth:`level_probs` (``log-normal``)."""
        return TIMESTEP_SAMPLINGS[self.timestep_sampling].draw(self, batch, generator, device)

    @classmethod
    def of(cls, model, process: MTProcess) -> Prediction:
        """The output space and weighting ``model`` was built with, else eps and uniform (Eq. 6 as printed)."""
        return getattr(model, "prediction", None) or cls(process)

    @property
    def space(self) -> OutputSpace:
        return PREDICTIONS[self.kind]

    def _a_s(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(sqrt(ab_t), sqrt(1 - ab_t)) as [B, 1, ..., 1]."""
        ab = self.process._at(self.process.alphas_cumprod, t, like)
        return ab.sqrt(), (1 - ab).sqrt()

    def target(self, z0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network should output for z_t built from (z_0, eps) at time index t."""
        return self.space.target(z0, noise, *self._a_s(t, z0))

    def eps_and_z0(self, out: Tensor, y: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(eps, y_0) from the network output ``out`` and y_t: the inverse of y_t = sqrt(ab) y_0 + sqrt(1 - ab) eps."""
        return self.space.invert(out, y, *self._a_s(t, y))

    def eps(self, out: Tensor, zt: Tensor, t: Tensor, enc: Mapping[str, Tensor]) -> Tensor:
        """eps from the network output at z_t, with the shift m_t of the encodings that formed z_t."""
        if self.space.is_eps:
            return out
        return self.eps_and_z0(out, zt - self.process.shift(t, enc, zt), t)[0]

    def weight(self, t: Tensor) -> Tensor:
        """Per-sample loss weight [B] in the parameterisation's own space (1 for ``uniform``): the weighting's
        weight on the eps error divided by the one the space's own loss puts there."""
        wanted = WEIGHTINGS[self.weighting].eps_weight
        if wanted is None:
            return torch.ones(t.shape, dtype=torch.float32, device=t.device)
        like = torch.empty(t.shape, dtype=torch.float64, device=t.device)
        ratio = snr(self.process._at(self.process.alphas_cumprod, t, like))
        return (wanted(ratio, self) / self.space.eps_weight(ratio)).float()
