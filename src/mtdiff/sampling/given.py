"""Any subset of the modalities given, the rest generated (docs/API.md).

Every inference mode is one of these with a different given set:

- Nothing or some modalities given exactly: their encodings enter the shift from the start (conditional
  generation; nothing given is joint generation). A modality that is not given is generated from its head
  (Algorithm 1, line 10) when it has one; where it is also a backbone input (-X) the backbone sees "nothing
  known" for it (``Modality.null``) while its estimate's encoding shifts the chain, as in training with
  ``train.cond_drop_prob`` (the input dropped, its encoding kept). A backbone input without a head (a caption)
  or whose data are images (a masked image, an edge map: conditions of the image, not outputs) is held at
  "nothing known", as in the unconditional branch of classifier-free guidance.
- A modality given on some pixels only, ``(x, keep)``: generated from its head, with the known pixels pasted
  into its start and into every head estimate (:class:`KnownPixels`).
- z_0 given on some pixels, ``(x, keep)``: every z_0 estimate takes the known pixels (hard data consistency,
  Section 4.1) and the result pastes them in again (:func:`generate_given`; :func:`restore`).
- z_0 given everywhere: nothing is sampled; every head reads z_t drawn from Eq. 4 at one time index with the
  unknown modalities "nothing known" (inverse mode, :func:`read_heads`; :func:`inverse`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..process import MTProcess
from .guidance import _Wrapper
from .samplers import Denoiser, SampleState
from .tasks import generate

__all__ = [
    "KnownPixels",
    "NullInputs",
    "split_unknown",
    "generate_given",
    "generate_joint",
    "drift",
    "Restoration",
    "restore",
    "head_estimates",
    "read_heads",
    "inverse",
]

Partial = tuple[Tensor, Tensor]  # (value, keep [N, 1, H, W]: 1 = known pixel)


class KnownPixels(_Wrapper):
    """A Denoiser whose head estimates (and the sampler's starts) of the modalities in ``partial`` keep their
    known pixels: x = keep x_known + (1 - keep) x_est, x_known in the modality's float form."""

    def __init__(self, model, partial: Mapping[str, Partial]):
        super().__init__(model)
        m = model.modalities
        self.partial = {n: (m[n].canonical(x), keep) for n, (x, keep) in partial.items()}

    def paste(self, data: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = dict(data)
        for n, (x, keep) in self.partial.items():
            if n in out:
                keep = keep.to(out[n])
                out[n] = keep * x.to(out[n]) + (1 - keep) * out[n]
        return out

    def predict(
        self, z: Tensor, t: Tensor, data: Mapping[str, Tensor], enc: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        eps, est = self.model.predict(z, t, data, enc)
        return eps, self.paste(est)

    def init_data(self, names: Sequence[str], batch: int, *, generator, device) -> dict[str, Tensor]:
        return self.paste(self.model.init_data(names, batch, generator=generator, device=device))


class NullInputs(_Wrapper):
    """A Denoiser whose backbone sees "nothing known" (``Modality.null``) for the backbone inputs ``names``,
    which the sampler generates from their heads: as in training with ``train.cond_drop_prob``, where the
    backbone input is dropped and its encoding still forms z_t."""

    def __init__(self, model, names: Sequence[str], batch: int, device=None):
        super().__init__(model)
        self.null = model.null_data(names, batch, device=device)

    def predict(
        self, z: Tensor, t: Tensor, data: Mapping[str, Tensor], enc: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        enc = self.model.encode(data) if enc is None else enc  # z_t was formed with the estimates' encodings
        null = {n: v.to(z.device) for n, v in self.null.items()}
        return self.model.predict(z, t, {**data, **null}, enc)


def split_unknown(model: Denoiser, known: Collection[str], partial: Collection[str] = ()) -> tuple[list, list]:
    """(generated, held) of the modalities not in ``known``, in the model's order: generated from their heads
    (those with a head, but for backbone inputs whose data are images, and those known on some pixels only);
    held at "nothing known" (the rest: captions, masked images and edge maps as backbone inputs)."""
    m, inputs = model.modalities, set(model.conditioned)
    rest = [n for n in m if n not in known]
    generated = [n for n in rest if n in partial or (m[n].has_head and not (n in inputs and m[n].image_data))]
    return generated, [n for n in rest if n not in generated]


def generate_joint(model, process: MTProcess, *, batch: int, device=None, **kw) -> SampleState:
    """Joint generation from nothing (:func:`generate_given` with nothing known): z_0 and every modality with a
    head; a masked image or an edge map as a backbone input gets its "nothing known" value (the complete mask,
    the zero image), as in training with ``train.cond_drop_prob``."""
    return generate_given(model, process, batch=batch, z_shape=model.z_shape, known={}, device=device, **kw)[0]


def generate_given(
    model: Denoiser,
    process: MTProcess,
    *,
    batch: int,
    z_shape: Sequence[int],
    known: Mapping[str, Tensor],
    partial: Mapping[str, Partial] | None = None,
    image: Partial | None = None,
    project: bool = True,
    device=None,
    **kw,
) -> tuple[SampleState, Tensor | None]:
    """z_0 and every modality not in ``known`` (:func:`split_unknown`), by :func:`generate` with its sampler
    keywords ``kw``. ``partial``: modalities known on some pixels; ``image``: z_0 known on some pixels
    (with ``project`` every z_0 estimate takes them). Returns the final state, whose ``z`` keeps the known
    pixels of z_0, and the model's own last z_0 estimate (None without ``image``)."""
    partial = dict(partial or {})
    generated, held = split_unknown(model, known, partial)
    null = model.null_data(held, batch, device=device)
    known = {n: known[n] if n in known else null[n] for n in model.modalities if n in known or n in null}
    inputs = [n for n in generated if n in model.conditioned and n not in partial]
    model = NullInputs(model, inputs, batch, device) if inputs else model
    model = KnownPixels(model, partial) if partial else model
    if image is not None and project:
        x0, keep = image
        kw["constraint"] = lambda z0: keep * x0 + (1 - keep) * z0
    state = generate(model, process, batch=batch, z_shape=z_shape, known=known, unknown=generated, device=device, **kw)
    if image is None:
        return state, None
    x0, keep = image
    raw = state.raw_z0 if state.raw_z0 is not None else state.z
    state.z = keep * x0 + (1 - keep) * raw
    return state, raw


def drift(raw: Tensor, x0: Tensor, keep: Tensor) -> Tensor:
    """The mean absolute difference between the model's own z_0 estimate ``raw`` and the known pixels ``x0``
    (where ``keep`` is 1), per sample."""
    denom = (keep.expand_as(raw).flatten(1).sum(1)).clamp(min=1)
    return ((raw - x0).abs() * keep).flatten(1).sum(1) / denom


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
    project: bool = True,
    **kw,
) -> Restoration:
    """Constrained restoration (Section 4.1): :func:`generate_given` with the masked image known as
    ``modality`` and as z_0 on the pixels where ``keep`` is 1 (``kw``: the sampler's keywords). With ``project``
    each step's z_0 estimate takes the known pixels (hard data consistency); the result keeps them exactly
    either way, and ``drift`` reports how far the model's own estimate was."""
    if keep.shape[0] != masked.shape[0] or keep.shape[-2:] != masked.shape[-2:]:
        raise ValueError(f"keep mask {tuple(keep.shape)} does not match masked image {tuple(masked.shape)}")
    state, raw = generate_given(
        model,
        process,
        batch=masked.shape[0],
        z_shape=masked.shape[1:],
        known={modality: masked},
        image=(masked, keep),
        project=project,
        device=masked.device,
        **kw,
    )
    return Restoration(state.z, raw, drift(raw, masked, keep), keep)


@torch.no_grad()
def head_estimates(
    model: Denoiser,
    process: MTProcess,
    z0: Tensor,
    data: Mapping[str, Tensor],
    *,
    t: int = 0,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Every head's estimate from z_t drawn from Eq. 4 at time index t with the encodings of ``data`` (and
    ``data`` as the backbone inputs); ``generator`` draws the noise. :func:`read_heads` gives it "nothing known"
    for every modality not known."""
    tt = torch.full((z0.shape[0],), t, dtype=torch.long, device=z0.device)
    noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
    zt = process.q_sample(z0, tt, model.encode(data), noise)
    return model.predict(zt, tt, data)[1]


def read_heads(
    model: Denoiser,
    process: MTProcess,
    z0: Tensor,
    *,
    t: int = 0,
    known: Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Inverse mode with z_0 known: z_t drawn from Eq. 4 at time index t with every modality not in ``known``
    "nothing known" (``Modality.null``), as in training with ``train.enc_drop_prob``; returns the known data
    and every other modality's head estimate (its null where it has no head). ``generator`` draws the noise."""
    known = dict(known or {})
    names = [n for n in model.modalities if n not in known]
    data = {**model.null_data(names, z0.shape[0], device=z0.device), **known}
    est = head_estimates(model, process, z0, data, t=t, generator=generator)
    return {n: est.get(n, data[n]) if n in names else data[n] for n in model.modalities}


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
    """Inverse mode for one modality: :func:`read_heads`' estimate of ``name`` (image -> label is
    classification, photo -> mask is segmentation). ``name`` must not be in ``known`` (:func:`head_estimates`
    reads a head with its own value known)."""
    if known is not None and name in known:
        raise ValueError(f"inverse reads {name!r} by its head; it cannot also be known")
    return read_heads(model, process, z0, t=t, known=known, generator=generator)[name]
