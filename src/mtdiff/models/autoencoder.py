"""The map from pixels into the diffusion space and back: the identity, or a frozen autoencoder.

The paper's translation experiments (Appendix E.1) diffuse at 256 px in the latent space of LDM's
KL-f8 autoencoder (Rombach et al., 2022): both images of a pair are encoded by the same frozen
encoder, and generated latents are decoded back to pixels. :class:`LatentMap` wraps a diffusers
``AutoencoderKL`` saved with ``save_pretrained``; :class:`PixelMap` is the identity used when no
autoencoder is configured, so the trainer and the commands have one code path.

Only the data of image modalities pass through the map (kinds with ``image_data``); label and vector
modalities keep their own encoders E_i into the (latent) diffusion space. A segmentation modality
in latent space would need its class maps at the latent resolution, so the config refuses it (and
masked images, whose masks and restoration live in pixel space).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import ConfigError
from ..data.cache import tensor_fingerprint

__all__ = [
    "DEFAULT_LATENT_SCALE",
    "AutoencoderError",
    "LatentMap",
    "PixelMap",
    "SpaceMap",
    "latent_shape",
    "read_vae_config",
]

DEFAULT_LATENT_SCALE = 0.18215  # LDM KL-f8 / Stable Diffusion: latents of about unit variance
_INSTALL = "pip install diffusers (or pip install 'mtdiff[latent]')"


class AutoencoderError(ConfigError):
    """data.autoencoder does not name a usable diffusers AutoencoderKL directory."""


class SpaceMap:
    """Pixels [-1, 1] <-> diffusion space. Subclasses implement ``encode``, ``decode`` and ``shape``."""

    def encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The diffusion space [C, H, W] of images [C, H, W]."""
        raise NotImplementedError

    def encode_data(self, data: Mapping[str, Tensor], modalities: Mapping[str, Any]) -> dict[str, Tensor]:
        """Modality data with every image-kind modality's images mapped into the diffusion space."""
        return {n: self.encode(x) if n in modalities and modalities[n].image_data else x for n, x in data.items()}


class PixelMap(SpaceMap):
    """The identity: the diffusion space is the pixel space."""

    def encode(self, images: Tensor) -> Tensor:
        return images

    def decode(self, z: Tensor) -> Tensor:
        return z

    def shape(self, image_shape):
        return tuple(image_shape)


def read_vae_config(path: str | Path) -> dict[str, Any]:
    """The config.json of an ``AutoencoderKL`` directory (no diffusers needed), checked."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise AutoencoderError(
            f"data.autoencoder={str(path)!r} is not a directory: expected a diffusers AutoencoderKL "
            f"saved with save_pretrained (config.json + weights); see docs/DATA.md, 'Latent space'"
        )
    cfg_file = path / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise AutoencoderError(
            f"data.autoencoder={str(path)!r}: cannot read {cfg_file} ({e}); expected a diffusers "
            f"AutoencoderKL saved with save_pretrained"
        ) from None
    if not isinstance(cfg, dict) or cfg.get("_class_name") != "AutoencoderKL":
        got = cfg.get("_class_name") if isinstance(cfg, dict) else type(cfg).__name__
        raise AutoencoderError(
            f"data.autoencoder={str(path)!r} is not a VAE directory: {cfg_file} describes "
            f"{got!r}, expected 'AutoencoderKL'"
        )
    return cfg


def latent_shape(vae_config: Mapping[str, Any], channels: int, image_size: int) -> tuple[int, int, int]:
    """[latent_channels, S / f, S / f] with f = 2^(number of encoder blocks - 1)."""
    factor = 2 ** (len(vae_config.get("block_out_channels", (64,))) - 1)
    if vae_config.get("in_channels", 3) != channels:
        raise AutoencoderError(
            f"the autoencoder takes {vae_config.get('in_channels', 3)}-channel images but data.channels={channels}"
        )
    if image_size % factor:
        raise AutoencoderError(
            f"data.image_size={image_size} is not divisible by the autoencoder's downsampling factor {factor}"
        )
    return int(vae_config.get("latent_channels", 4)), image_size // factor, image_size // factor


class LatentMap(SpaceMap):
    """A frozen diffusers ``AutoencoderKL`` (eval mode, no gradients, never saved in mtdiff checkpoints).

    ``encode(x) = scale * (posterior mean - shift)``: the mean, not a sample of the posterior, so
    z_0 is a deterministic function of the image (and a resumed run sees the same z_0).
    ``decode(z)`` inverts it through the decoder and clamps to [-1, 1]. Work is done in chunks of
    ``chunk`` images to bound the decoder's memory at 256 px.
    """

    def __init__(self, vae: torch.nn.Module, *, scale: float, shift: float = 0.0, chunk: int = 16):
        self.vae = vae.eval().requires_grad_(False)
        self.scale, self.shift, self.chunk = float(scale), float(shift), chunk
        self.config = dict(vae.config)

    @classmethod
    def load(cls, path: str | Path, *, scale: float | None = None, device: torch.device | str = "cpu") -> LatentMap:
        """Load ``path`` (a diffusers ``save_pretrained`` directory); ``scale`` None: its scaling_factor."""
        vae_cfg = read_vae_config(path)
        try:
            from diffusers import AutoencoderKL
        except ImportError as e:
            raise AutoencoderError(f"data.autoencoder={str(path)!r} needs the diffusers package: {_INSTALL}") from e
        try:
            vae = AutoencoderKL.from_pretrained(
                str(Path(path).expanduser()), local_files_only=True, low_cpu_mem_usage=False
            )
        except Exception as e:  # missing or corrupt weights, a config diffusers rejects
            raise AutoencoderError(
                f"data.autoencoder={str(path)!r}: cannot load the AutoencoderKL ({type(e).__name__}: {e})"
            ) from e
        if scale is None:
            scale = vae_cfg.get("scaling_factor") or DEFAULT_LATENT_SCALE
        return cls(vae.to(device=device, dtype=torch.float32), scale=scale, shift=vae_cfg.get("shift_factor") or 0.0)

    def to(self, device: torch.device | str) -> LatentMap:
        self.vae.to(device)
        return self

    def shape(self, image_shape):
        return latent_shape(self.config, image_shape[0], image_shape[-1])

    def identity(self) -> dict[str, Any]:
        """What z_0 depends on besides the images: a digest of the VAE's config and weights, scale and shift
        (the key of cached latents: another VAE, or another scale, never reads them)."""
        weights = tensor_fingerprint(self.vae.state_dict(), {"config": self.config})
        return {"vae": weights, "scale": self.scale, "shift": self.shift}

    def _chunked(self, fn, x: Tensor) -> Tensor:
        return torch.cat([fn(part) for part in x.split(self.chunk)]) if len(x) else x

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images [B, C, H, W] in [-1, 1] -> z_0 [B, c, H/f, W/f] (posterior mean, deterministic)."""
        return self._chunked(lambda x: (self.vae.encode(x.float()).latent_dist.mean - self.shift) * self.scale, images)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Latents [B, c, h, w] -> images [B, C, h f, w f] in [-1, 1]."""
        return self._chunked(lambda x: self.vae.decode(x.float() / self.scale + self.shift).sample.clamp(-1, 1), z)
