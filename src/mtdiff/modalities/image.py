"""The ``image`` kind: a continuous image in the diffusion space's shape (Section 2.2.3), also a source image
that other images are translated from (Appendix E.1)."""

from __future__ import annotations

import torch

from .base import Modality
from .common import generator_device, per_sample_mean

__all__ = ["ImageModality"]


class ImageModality(Modality):
    """A continuous image in the diffusion space's shape. E = identity; head = output-block replica;
    Gaussian likelihood, so the KL term is an MSE (Section 2.2.3). ``clip``: estimates are clamped to
    the pixel range [-1, 1] (off in an autoencoder's latent space, Appendix E.1)."""

    kind = "image"
    value = "image"
    head_choices = ("output",)
    encoder_choices = ("identity",)
    default_source = "image"
    image_data = True
    translation_source = True

    def __init__(self, name: str, *, head: str = "output", encoder: str = "identity", clip: bool = True, **kw):
        super().__init__(name, head=head, encoder=encoder, **kw)
        self.clip = clip
        self.cond_channels = self.z_shape[0]
        self.decoder = self._build_head(self.z_shape[0])

    @classmethod
    def config_options(cls, mc, *, context_dim, latent):
        options = super().config_options(mc, context_dim=context_dim, latent=latent)
        return {**options, "clip": not latent}  # latents are not bounded to [-1, 1]

    def null(self, batch, *, device=None, dtype=torch.float32):
        # The zero image: mid-grey in pixels, the middle of the data in a latent space, and E(0) = 0, so a dropped
        # encoding does not shift z_t (a random null would add noise to z_t that eps cannot predict; see vectors).
        return torch.zeros(batch, *self.z_shape, device=device, dtype=dtype)

    def init_unknown(self, batch, *, generator, device):
        return torch.randn(batch, *self.z_shape, generator=generator, device=generator_device(generator, device)).to(
            device
        )

    def draw(self, x):
        return x.float()

    def translation_scores(self, source, generated, real, read):
        """For edge maps (``source`` "edges"): the edges re-extracted from the generated images against the input."""
        if self.source != "edges":
            return {}
        from ..data.derived import edge_map
        from ..metrics import SegmentationMeter

        meter = SegmentationMeter(2)
        meter.update((edge_map(generated) > 0).long().squeeze(1), (source > 0).long().squeeze(1))
        return {f"edges_of_generated/{key}": v for key, v in meter.compute().items() if key != "per_class_iou"}

    def encode(self, x, backbone_encode=None):
        return x

    def loss(self, pred, x):
        return per_sample_mean((pred.float() - x.float()) ** 2)

    def estimate(self, pred):
        return pred.clamp(-1, 1) if self.clip else pred

    def condition(self, x):
        return x
