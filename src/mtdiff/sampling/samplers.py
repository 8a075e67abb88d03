"""Samplers on the y-chain (docs/DESIGN.md, section "The y-chain").

With m_t = sum_i alpha~_t^(i) E_i and y_t = z_t - m_t, y is an ordinary DDPM chain, so every
step below is a standard DDPM/DDIM step on y: subtract the shift that formed z_t, step, add
the shift of the next time with the newest encodings. With the encodings fixed this is exactly
Algorithm 1's update z_{t-1} = (z_t - (1 - a_t)/sqrt(1 - ab_t) eps)/sqrt(a_t) - sum_i w_t E_i
(plus noise), corrected to noise of standard deviation sqrt(beta~_t), not beta~_t.

A sampler is ``(model, process, init, steps, *, generator, callback) -> SampleState``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from ..process import MTProcess
from ..process.prediction import eps_from_z0, z0_from_eps

__all__ = [
    "SampleState",
    "Denoiser",
    "init_state",
    "ancestral",
    "ddim",
    "dpm_solver",
    "log_snr",
    "timesteps",
    "Sampler",
    "SAMPLERS",
    "sampler_named",
]


class Denoiser(Protocol):
    """What a sampler needs from a model (``mtdiff.models.MTModel`` is one)."""

    def predict(
        self, z: Tensor, t: Tensor, data: Mapping[str, Tensor], enc: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]: ...
    def encode(self, data: Mapping[str, Tensor]) -> dict[str, Tensor]: ...
    def init_data(self, names: Sequence[str], batch: int, *, generator, device) -> dict[str, Tensor]: ...
    def null_data(self, names: Sequence[str], batch: int, *, device=None) -> dict[str, Tensor]: ...


@dataclass
class SampleState:
    """z at the current time, the modality data (known and current estimates) and the encodings
    that formed z. ``unknown`` names the modalities updated from their heads (Algorithm 1, line 10)."""

    z: Tensor
    data: dict[str, Tensor]
    unknown: tuple[str, ...]
    enc: dict[str, Tensor] = field(default_factory=dict)
    raw_z0: Tensor | None = None


def init_state(
    model: Denoiser,
    process: MTProcess,
    *,
    batch: int,
    z_shape: Sequence[int],
    known: Mapping[str, Tensor] | None = None,
    unknown: Sequence[str] = (),
    start: str = "marginal",
    generator: torch.Generator | None = None,
    device=None,
) -> SampleState:
    """z_T and the initial data. ``start="marginal"``: z_T ~ N(m_T(E), (1 - ab_T) I), the forward
    process's end given the current encodings (docs/DESIGN.md, paper error 3); ``"standard"``: N(0, I),
    Algorithm 1 as printed."""
    if start not in ("marginal", "standard"):
        raise ValueError(f"start must be 'marginal' or 'standard', got {start!r}")
    data = {**model.init_data(list(unknown), batch, generator=generator, device=device), **(known or {})}
    enc = model.encode(data)
    noise = torch.randn(batch, *z_shape, generator=generator, device=device)
    if start == "standard":
        return SampleState(noise, data, tuple(unknown), enc)
    mean, std = process.prior_mean_std(enc, noise)
    return SampleState(mean + std * noise, data, tuple(unknown), enc)


def log_snr(alphas_cumprod: Tensor) -> Tensor:
    """lambda = log(sqrt(ab) / sqrt(1 - ab)), half the log signal-to-noise ratio of z_t (DPM-Solver's time variable)."""
    return 0.5 * (alphas_cumprod.log() - torch.log1p(-alphas_cumprod))


def timesteps(num_timesteps: int, steps: int | None, *, alphas_cumprod: Tensor | None = None) -> list[int]:
    """Descending time indices from T - 1 over ``steps`` steps (all when None): evenly spaced in t,
    or, given ``alphas_cumprod``, evenly spaced in log-SNR lambda = log(sqrt(ab) / sqrt(1 - ab))
    (the spacing DPM-Solver uses for low-resolution images), each rounded to the nearest index."""
    steps = num_timesteps if steps is None else int(steps)
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    if alphas_cumprod is None:
        idx = torch.linspace(num_timesteps - 1, 0, steps, dtype=torch.float64).round().long()
    else:
        lam = log_snr(alphas_cumprod)  # increasing as t falls
        target = torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64)
        idx = (lam[None, :] - target[:, None]).abs().argmin(1)
    return list(dict.fromkeys(idx.tolist()))


Callback = Callable[[int, int, SampleState, Tensor], None]  # (step, t, state, z0_hat)
Constraint = Callable[[Tensor], Tensor]  # z0_hat -> z0_hat satisfying known values


def _loop(
    step_fn,
    model: Denoiser,
    process: MTProcess,
    init: SampleState,
    steps: int | None,
    *,
    generator,
    callback: Callback | None,
    clip: bool,
    constraint: Constraint | None = None,
    logsnr_spacing: bool = False,
) -> SampleState:
    """Shared loop: predict, estimate z_0 (clipped, constrained), update unknown data, step on y, re-add the shift.

    ``constraint`` projects each z_0 estimate onto known values (for restoration: paste the known
    pixels), so the chain stays consistent with them; eps is re-derived from the projected z_0.
    ``state.raw_z0`` keeps the model's last unconstrained z_0 estimate.
    """
    ts = timesteps(process.num_timesteps, steps, alphas_cumprod=process.alphas_cumprod if logsnr_spacing else None)
    state = SampleState(init.z, dict(init.data), init.unknown, dict(init.enc))
    # inference mode (no autograd records at all) unless the model differentiates itself (head guidance)
    with torch.inference_mode(not getattr(model, "needs_grad", False)):
        return _steps(step_fn, model, process, state, ts, generator, callback, clip, constraint)


def _steps(step_fn, model, process, state, ts, generator, callback, clip, constraint) -> SampleState:
    z = state.z
    for k, (t, s) in enumerate(zip(ts, ts[1:] + [-1])):
        tt = torch.full((z.shape[0],), t, dtype=torch.long, device=z.device)
        eps, est = model.predict(z, tt, state.data, state.enc)
        ab_t = process.alphas_cumprod[t]
        ab_s = process.alphas_cumprod[s] if s >= 0 else torch.ones((), dtype=torch.float64)
        y = z - process.shift(tt, state.enc, z)  # into the DDPM chain
        a, sd = ab_t.sqrt().item(), (1 - ab_t).sqrt().item()
        z0 = z0_from_eps(eps, y, a, sd)  # predicted z_0 (= y_0)
        state.raw_z0 = z0
        if clip or constraint is not None:
            z0 = z0.clamp(-1, 1) if clip else z0
            z0 = constraint(z0) if constraint is not None else z0
            eps = eps_from_z0(z0, y, a, sd)
        state.data.update({n: est[n] for n in state.unknown})
        state.enc = model.encode(state.data)
        y_s = step_fn(y, z0, eps, ab_t, ab_s, generator=generator, last=s < 0)
        z = y_s + process.shift(torch.full_like(tt, s), state.enc, y_s)  # back into z
        state.z = z
        if callback is not None:
            callback(k, t, state, z0)
    return state


def _ancestral_step(y, z0, eps, ab_t, ab_s, *, generator, last):
    """DDPM posterior q(y_s | y_t, y_0) (Eq. 5 on y; strided when s < t - 1)."""
    a_ts = ab_t / ab_s
    coef0 = (ab_s.sqrt() * (1 - a_ts) / (1 - ab_t)).item()
    coeft = (a_ts.sqrt() * (1 - ab_s) / (1 - ab_t)).item()
    mean = coef0 * z0 + coeft * y
    if last:
        return mean
    var = ((1 - a_ts) * (1 - ab_s) / (1 - ab_t)).item()  # beta~ (std sqrt(beta~), not beta~)
    return mean + var**0.5 * torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)


def ancestral(
    model: Denoiser,
    process: MTProcess,
    init: SampleState,
    steps: int | None = None,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    clip: bool = False,
    constraint: Constraint | None = None,
) -> SampleState:
    """Algorithm 1 (corrected): ancestral sampling with the posterior variance beta~_t."""
    return _loop(
        _ancestral_step,
        model,
        process,
        init,
        steps,
        generator=generator,
        callback=callback,
        clip=clip,
        constraint=constraint,
    )


def ddim(
    model: Denoiser,
    process: MTProcess,
    init: SampleState,
    steps: int | None = 50,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    clip: bool = False,
    constraint: Constraint | None = None,
) -> SampleState:
    """DDIM (Song et al., 2021) on the y-chain; eta = 0 is deterministic, eta = 1 is ancestral."""

    def step(y, z0, eps, ab_t, ab_s, *, generator, last):
        sigma = (eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).sqrt()).item()
        y_s = ab_s.sqrt().item() * z0 + max(float(1 - ab_s) - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0 and not last:
            y_s = y_s + sigma * torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        return y_s

    return _loop(
        step, model, process, init, steps, generator=generator, callback=callback, clip=clip, constraint=constraint
    )


def dpm_solver(
    model: Denoiser,
    process: MTProcess,
    init: SampleState,
    steps: int | None = 20,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    clip: bool = False,
    constraint: Constraint | None = None,
) -> SampleState:
    """DPM-Solver++(2M) (Lu et al., 2022), the multistep second-order solver of the probability-flow
    ODE in data prediction, on the y-chain. With lambda = log(sqrt(ab) / sqrt(1 - ab)) and
    h = lambda_s - lambda_t, one step is y_s = (sigma_s / sigma_t) y_t - alpha_s (e^-h - 1) D, where
    D = (1 + 1/(2r)) y0_t - 1/(2r) y0_prev with r = h_prev / h (D = y0_t on the first step), and
    the last step returns y0_t (first order at sigma = 0). Steps are evenly spaced in lambda: evenly
    spaced t make the last interval the longest by far, and extrapolating over it overshoots.
    Deterministic; ``generator`` is unused."""
    prev: dict[str, object] = {}

    def step(y, z0, eps, ab_t, ab_s, *, generator, last):
        if last:
            return z0
        lam_t, lam_s = log_snr(ab_t), log_snr(ab_s)
        h = float(lam_s - lam_t)
        d = z0
        if prev:
            r = prev["h"] / h
            d = (1 + 0.5 / r) * z0 - (0.5 / r) * prev["z0"]
        prev.update(h=h, z0=z0)
        sigma_ratio = float(((1 - ab_s) / (1 - ab_t)).sqrt())
        return sigma_ratio * y - float(ab_s.sqrt()) * math.expm1(-h) * d

    return _loop(
        step,
        model,
        process,
        init,
        steps,
        generator=generator,
        callback=callback,
        clip=clip,
        constraint=constraint,
        logsnr_spacing=True,
    )


@dataclass(frozen=True)
class Sampler:
    """A registry entry: the sampler function and the keyword options it takes beyond the common ones
    (``ddim``'s ``eta``). Calling the entry calls the function."""

    fn: Callable[..., SampleState]
    options: tuple[str, ...] = ()

    def __call__(self, *args, **kwargs) -> SampleState:
        return self.fn(*args, **kwargs)

    def run(self, model, process, init, steps, *, options: Mapping[str, object] = (), **kwargs) -> SampleState:
        """Call the sampler with the common keywords and those of ``options`` it takes (the rest ignored)."""
        taken = {k: v for k, v in dict(options).items() if k in self.options}
        return self.fn(model, process, init, steps, **kwargs, **taken)


SAMPLERS: dict[str, Sampler] = {
    "ancestral": Sampler(ancestral),
    "ddim": Sampler(ddim, ("eta",)),
    "dpm-solver": Sampler(dpm_solver),
}
"""Samplers by name (``sample.sampler``, ``--sampler``): a new sampler is one entry here."""


def sampler_named(name: str) -> Sampler:
    """The registry entry of ``name``, or a ValueError listing the valid names."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {list(SAMPLERS)}")
    return SAMPLERS[name]
