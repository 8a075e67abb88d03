"""The sampler's entry point (joint and conditional generation, docs/DESIGN.md, section "Inference modes") and
classification by the diffusion loss; what is given and what generated is :mod:`mtdiff.sampling.given`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..process import MTProcess
from .samplers import Denoiser, SampleState, init_state, sampler_named

__all__ = ["generate", "generate_conditional", "elbo_logits", "elbo_timesteps"]


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
