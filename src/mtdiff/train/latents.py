"""The VAE latents of the training images, encoded once (``data.latent_cache``).

In a latent space (``data.autoencoder``) z_0 = scale * (posterior mean - shift) is a deterministic function of
the image, so the frozen encoder need not run on the same images every epoch. :func:`with_latents` encodes every
training image once, in chunks on the training device, and keeps the float32 latents in the data cache
(:func:`mtdiff.data.cache.cached_tensors`) under a digest of the images and of the VAE (config, weights, scale,
shift). They join the set as extras ``latent:<batch key>``, so the batch stream gathers each batch's latents with
its images, and :func:`diffusion_data` takes them in place of encoding. The data loader draws nothing at random
(no flips or crops), so a batch's images are exactly the stored ones. Besides z_0, the images an image-kind
modality reads as they are stored (a paired folder's source) are cached too; data derived from the image
(edges) or drawn at random per step go through the encoder every step, as without the cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..config import Config
from ..data.cache import cached_tensors, tensor_fingerprint
from ..data.imageset import ImageSet
from ..modalities import MODALITY_KINDS
from ..modalities.base import Modality
from ..models.autoencoder import LatentMap, SpaceMap

__all__ = ["PREFIX", "diffusion_data", "latent_sources", "with_latents"]

PREFIX = "latent:"  # batch key of the cached latents of batch key k: PREFIX + k


def _reads_stored(kind: type[Modality]) -> bool:
    """Whether a kind's data are images taken from the batch as stored (no random draw, nothing derived)."""
    return kind.image_data and kind.derive is Modality.derive


def latent_sources(cfg: Config, data: ImageSet) -> tuple[str, ...]:
    """The batch keys whose latents are cached: "image" (z_0), and every image extra of ``data`` that an
    image-kind modality of ``cfg`` reads as stored."""
    keys = ["image"]
    for mc in cfg.modalities.values():
        kind = MODALITY_KINDS[mc.kind]
        source = mc.source or kind.default_source
        extra = data.extras.get(source)
        if _reads_stored(kind) and extra is not None and extra.dtype == torch.uint8 and source not in keys:
            keys.append(source)
    return tuple(keys)


def with_latents(
    data: ImageSet,
    latent: LatentMap,
    sources: tuple[str, ...],
    *,
    directory: Path | None,
    device: torch.device,
    progress: bool = False,
) -> ImageSet:
    """``data`` with the latents of its ``sources`` as extras ``PREFIX + key``: mapped from the data cache
    ``directory`` when encoded before with the same images and VAE, else encoded now (and kept there)."""
    images = {k: v for k, v in data.tensors().items() if k in sources}
    key = "latents-" + tensor_fingerprint(images, {"latents": latent.identity()})
    what = f"the VAE latents of {data.name or 'the training set'!r} ({', '.join(images)})"
    z = cached_tensors(lambda: _encode_all(latent, images, device, progress), directory, key, what=what)
    return replace(data, extras={**data.extras, **{PREFIX + k: v for k, v in z.items()}})


@torch.no_grad()
def _encode_all(latent: SpaceMap, images: Mapping[str, Tensor], device: torch.device, progress: bool):
    """Every uint8 image through the map on ``device`` (converted to [-1, 1] as the batch stream converts them),
    float32 on the host."""
    chunk = getattr(latent, "chunk", 16)
    out = {}
    with torch.autocast(device.type, enabled=False):
        for key, x in images.items():
            parts = tqdm(x.split(chunk), desc=f"encoding {key}", disable=not progress, dynamic_ncols=True)
            out[key] = torch.cat([latent.encode(p.to(device).to(torch.float32) / 127.5 - 1.0).cpu() for p in parts])
    return out


def diffusion_data(
    space_map: SpaceMap, batch: Mapping[str, Tensor], data: Mapping[str, Tensor], modalities: Mapping[str, Modality]
) -> tuple[Tensor, dict[str, Tensor]]:
    """z_0 and the modality data X in the diffusion space: the batch's cached latents (keys ``PREFIX + k``) where
    it carries them, the rest through ``space_map``."""
    cached = {k[len(PREFIX) :]: v for k, v in batch.items() if k.startswith(PREFIX)}
    z0 = cached["image"] if "image" in cached else space_map.encode(batch["image"])
    stored = {
        n: cached[m.source]
        for n, m in modalities.items()
        if n in data and m.source in cached and _reads_stored(type(m))
    }
    encoded = space_map.encode_data({n: x for n, x in data.items() if n not in stored}, modalities)
    return z0, {n: stored[n] if n in stored else encoded[n] for n in data}
