"""The three inference modes of one model (docs/DESIGN.md, section "Inference modes"): joint, conditional, inverse."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..process import MTProcess
from .samplers import Denoiser, SampleState, init_state, sampler_named

__all__ = [
    "generate",
    "generate_conditional",
    "restore",
    "inverse",
    "Restoration",
    "elbo_logits",
    "elbo_timesteps",
]


def generate(
    model: Denoiser,
    process: MTProcess,
    *,
    batch: int,
    z_shape: Sequence[int],
    known: Mapping[str, Tensor] | None = None,
    unknown: Sequence[str] = (),
    sampler: str = "ddim",
    steps: int | None = 50,
    eta: float = 0.0,
    start: str = "marginal",
    clip: bool = True,
    generator: torch.Generator | None = None,
    device=None,
    callback=None,
    constraint=None,
) -> SampleState:
    """Joint (nothing known) or conditional (some X known) generation of z_0 and the unknown X."""
    entry = sampler_named(sampler)  # refused before any work
    init = init_state(
        model,
        process,
        batch=batch,
        z_shape=z_shape,
        known=known,
        unknown=unknown,
        start=start,
        generator=generator,
        device=device,
    )
    return entry.run(
        model,
        process,
        init,
        steps,
        options={"eta": eta},
        generator=generator,
        callback=callback,
        clip=clip,
        constraint=constraint,
    )


def generate_conditional(model, process: MTProcess, *, known: Mapping[str, Tensor], batch: int, **kw) -> SampleState:
    """Conditional generation: the ``known`` modalities given, z_0 and every other modality with a head generated."""
    unknown = [n for n in model.modalities if n not in known and model.modalities[n].has_head]
    return generate(model, process, batch=batch, z_shape=model.z_shape, known=known, unknown=unknown, **kw)


@dataclass
class Restoration:
    """``restored`` keeps the known pixels exactly; ``raw`` is the model's own last z_0 estimate;
    ``drift`` is the mean absolute difference between ``raw`` and the input on the known pixels, per sample;
    ``keep`` the known-pixel mask [N, 1, H, W] (1 = known)."""

    restored: Tensor
    raw: Tensor
    drift: Tensor
    keep: Tensor | None = None


def restore(
    model: Denoiser,
    process: MTProcess,
    masked: Tensor,
    keep: Tensor,
    *,
    modality: str = "masked",
    unknown: Sequence[str] = (),
    project: bool = True,
    **kw,
) -> Restoration:
    """Constrained restoration (Section 4.1): generate z_0 given the masked image and keep the known
    pixels exactly. With ``project`` each step's z_0 estimate takes the known pixels (hard data
    consistency), which keeps the deterministic chain from drifting off them; the known pixels are
    pasted into the result either way. ``drift`` reports how far the model's own estimate was."""
    if keep.shape[0] != masked.shape[0] or keep.shape[-2:] != masked.shape[-2:]:
        raise ValueError(f"keep mask {tuple(keep.shape)} does not match masked image {tuple(masked.shape)}")
    kw["device"] = masked.device
    if project:
        kw["constraint"] = lambda z0: keep * masked + (1 - keep) * z0
    state = generate(
        model, process, batch=masked.shape[0], z_shape=masked.shape[1:], known={modality: masked}, unknown=unknown, **kw
    )
    raw = state.raw_z0 if state.raw_z0 is not None else state.z
    restored = keep * masked + (1 - keep) * raw
    denom = (keep.expand_as(raw).flatten(1).sum(1)).clamp(min=1)
    drift = ((raw - masked).abs() * keep).flatten(1).sum(1) / denom
    return Restoration(restored, raw, drift, keep)


@torch.no_grad()
def inverse(
    model: Denoiser,
    process: MTProcess,
    z0: Tensor,
    name: str,
    *,
    t: int = 0,
    known: Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Inverse mode: z_0 known, modality ``name`` read from its head at time index t
    (image -> label is classification, photo -> mask is segmentation). The forward process and the
    -X backbone see ``name`` as "nothing known" (``Modality.null``), as in training with ``train.enc_drop_prob``;
    ``generator`` draws the forward process's noise."""
    known = dict(known or {})
    tt = torch.full((z0.shape[0],), t, dtype=torch.long, device=z0.device)
    data = {**model.null_data([name], z0.shape[0], device=z0.device), **known}
    noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
    zt = process.q_sample(z0, tt, model.encode(data), noise)  # the unknown modality as "nothing known"
    _, est = model.predict(zt, tt, data)
    return est[name]


def elbo_timesteps(num_timesteps: int, steps: int = 10) -> list[int]:
    """``steps`` time indices evenly spaced strictly inside [0, T - 1], where :func:`elbo_logits` scores classes."""
    return torch.linspace(0, num_timesteps - 1, steps + 2)[1:-1].round().long().tolist()


@torch.no_grad()
def elbo_logits(
    model: Denoiser,
    process: MTProcess,
    z0: Tensor,
    name: str,
    *,
    timesteps: Sequence[int],
    generator: torch.Generator | None = None,
) -> Tensor:
    """Classify by the diffusion loss: logit_c = -mean_t ||eps_theta(z_t(c), t) - eps||^2 with
    z_t(c) = q_sample(z_0, t, E(c), eps) and the same eps for every class c of label modality ``name``
    (a Monte-Carlo estimate of the eps term of the ELBO with the label set to c)."""
    b, k = z0.shape[0], model.modalities[name].num_classes
    err = torch.zeros(b, k, device=z0.device)
    classes = [{name: torch.full((b,), c, dtype=torch.long, device=z0.device)} for c in range(k)]
    encoded = [model.encode(data) for data in classes]  # E(c) does not depend on t: encode once
    for t in timesteps:
        tt = torch.full((b,), t, dtype=torch.long, device=z0.device)
        noise = torch.randn(z0.shape, generator=generator, device=z0.device)
        for c, (data, enc) in enumerate(zip(classes, encoded)):
            eps, _ = model.predict(process.q_sample(z0, tt, enc, noise), tt, data, enc)
            err[:, c] += ((eps - noise) ** 2).flatten(1).mean(1)
    return -err / len(timesteps)
