"""The ``masked_image`` kind: the image with random patches zeroed, whose restoration is the image's
(Section 4.1)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..data.masking import apply_mask, make_mask
from .base import ALL
from .common import generator_device
from .image import ImageModality

__all__ = ["MaskedImageModality"]


class MaskedImageModality(ImageModality):
    """The paper's masked image (Section 4.1): the image with m ~ U{0..max_patches} square patches
    zeroed; ``full_mask_prob`` of training samples are fully masked, the input that the -X
    variant receives when it generates from scratch."""

    kind = "masked_image"
    value = "image"
    image_view = True
    translation_source = False  # a view of the image itself (Section 4.1): restored, not translated from
    latent_refusal = (
        "its patch masks, its complete mask (all zeros) and mtdiff restore's pasting of known pixels "
        "all live in pixel space and have no counterpart in the VAE's latent space"
    )

    @classmethod
    def configure(cls, mc, *, key, variant):
        super().configure(mc, key=key, variant=variant)
        if not 0 <= mc.full_mask_prob <= 1:
            raise ValueError(f"{key}.full_mask_prob must be in [0, 1], got {mc.full_mask_prob}")

    @classmethod
    def config_options(cls, mc, *, context_dim, latent):
        return {
            **super().config_options(mc, context_dim=context_dim, latent=latent),
            "mask": mc.mask,
            "max_patches": mc.max_patches,
            "patch_frac": mc.patch_frac,
            "full_mask_prob": mc.full_mask_prob,
        }

    def __init__(
        self,
        name: str,
        *,
        mask: str = "random",
        max_patches: int = 10,
        patch_frac: float = 0.25,
        full_mask_prob: float = 0.0,
        **kw,
    ):
        super().__init__(name, **kw)
        if not 0.0 <= full_mask_prob <= 1.0:
            raise ValueError(f"modality {name!r}: full_mask_prob must be in [0, 1], got {full_mask_prob}")
        self.mask, self.max_patches, self.patch_frac, self.full_mask_prob = (
            mask,
            max_patches,
            patch_frac,
            full_mask_prob,
        )

    def keep_mask(self, batch: int, *, generator, device) -> Tensor:
        """Training masks [B, 1, H, W] (1 = pixel kept)."""
        size = self.z_shape[-1]
        kw = {"max_patches": self.max_patches, "patch_frac": self.patch_frac} if self.mask == "random" else {}
        keep = make_mask(self.mask, batch, size, generator=generator, device=device, **kw)
        if self.full_mask_prob > 0:  # drawn on the generator's device, then moved
            full = torch.rand(batch, generator=generator, device=generator_device(generator, device)).to(device)
            full = full < self.full_mask_prob
            keep = keep * (~full).to(keep).reshape(-1, 1, 1, 1)
        return keep

    def derive(self, batch, generator, rows=ALL):
        image = batch[self.source]
        return apply_mask(image[rows], self.keep_mask(image.shape[0], generator=generator, device=image.device)[rows])

    def init_unknown(self, batch, *, generator, device):
        # generated from the "complete mask" (Section 4.1), not from noise: all zeros, the image's null
        return self.null(batch, device=device)

    def view_of_image(self, image, keep):
        return apply_mask(image, keep) if self.source == "image" else None  # the image's unknown pixels zeroed
