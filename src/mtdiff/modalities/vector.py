"""The ``vector`` kind: a representation vector (Appendix E.4), optionally the representation of a frozen image
network."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ALL, Modality
from .common import fixed_normal, per_sample_mean, resolve_dim

__all__ = ["VectorModality"]


class VectorModality(Modality):
    """A representation vector [B, D] (Appendix E.4). Encoders: ``fixed`` (a fixed random linear map
    into the diffusion space) or ``backbone`` (cross-attention token, stop-gradient). Head: MLP
    on the middle block (two layers: hidden, SiLU, out). Gaussian likelihood -> MSE.

    With ``extractor`` (a name in ``mtdiff.pretrained.IMAGE_FEATURES``) the data is the frozen
    network's representation of the image, rescaled to norm sqrt(D) so each coordinate is O(1)
    (the direction is what a representation means; cosines are unchanged). The extractor is
    loaded by ``prepare`` and is never part of the model's weights."""

    kind = "vector"
    value = "vector"
    head_choices = ("middle",)
    encoder_choices = ("fixed", "backbone")
    default_source = "vector"
    token_input = True

    @classmethod
    def configure(cls, mc, *, key, variant):
        super().configure(mc, key=key, variant=variant)
        from ..pretrained.images import IMAGE_FEATURE_DIMS

        if mc.extractor is not None and mc.extractor not in IMAGE_FEATURE_DIMS:
            raise ValueError(
                f"{key}.extractor: {mc.extractor!r} is not valid; choose one of {sorted(IMAGE_FEATURE_DIMS)}"
            )
        resolve_dim(mc, key, "extractor", mc.extractor, IMAGE_FEATURE_DIMS)

    @classmethod
    def config_options(cls, mc, *, context_dim, latent):
        return {
            "dim": mc.dim,
            "hidden": mc.hidden or 256,
            "seed": mc.seed,
            "context_dim": context_dim,
            "extractor": mc.extractor,
        }

    def __init__(
        self,
        name: str,
        *,
        dim: int,
        head: str = "middle",
        encoder: str = "fixed",
        context_dim: int = 0,
        hidden: int = 256,
        seed: int = 0,
        extractor: str | None = None,
        **kw,
    ):
        super().__init__(name, head=head, encoder=encoder, **kw)
        self.dim, self.extractor_name = dim, extractor
        self._extractor: tuple[nn.Module, ...] = ()  # a tuple keeps it out of state_dict and .to()
        self.decoder = self._build_head(dim, hidden=hidden)
        self.register_buffer("projection", fixed_normal(seed, dim, math.prod(self.z_shape)) / math.sqrt(dim))
        self.uses_context = encoder == "backbone" or context_dim > 0
        if self.uses_context:
            if context_dim <= 0:
                raise ValueError(f"modality {name!r}: the backbone encoder needs model.context_dim > 0")
            self.token = nn.Linear(dim, context_dim)

    def __deepcopy__(self, memo):
        """Copies (the EMA model's) share the frozen extractor instead of holding a second one."""
        memo[id(self._extractor)] = self._extractor
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def prepare(self) -> None:
        if self.extractor_name and not self._extractor:
            from ..pretrained import load_image_features

            net = load_image_features(self.extractor_name)
            if net.num_features != self.dim:
                raise ValueError(
                    f"modality {self.name!r}: extractor {self.extractor_name!r} gives {net.num_features}-d "
                    f"features but dim={self.dim}"
                )
            self._extractor = (net,)

    @torch.no_grad()
    def represent(self, images: Tensor) -> Tensor:
        """The extractor's representation of images [B, C, H, W] in [-1, 1], at norm sqrt(D)."""
        if not self.extractor_name:
            raise ValueError(f"modality {self.name!r} has no extractor; its data must be in the batch")
        self.prepare()
        net = self._extractor[0].to(images.device)
        return F.normalize(net(images).float(), dim=1) * math.sqrt(self.dim)

    def derive(self, batch, generator, rows=ALL):
        if self.extractor_name and self.source not in batch:
            return self.represent(batch["image"][rows])
        return super().derive(batch, generator, rows)

    def null(self, batch, *, device=None, dtype=torch.float32):
        # "Nothing known" is the zero vector (E(0) = 0 for the fixed encoder), not a random one: a random
        # vector as the dropped encoding (train.enc_drop_prob) adds noise to z_t that eps cannot predict
        # (measured on mnist-text2img: test eps MSE 0.17 with random, 0.065 with the true vector).
        return torch.zeros(batch, self.dim, device=device, dtype=dtype)

    def data_shape(self):
        return (self.dim,)

    @torch.no_grad()
    def sample_scores(self, generated, images):
        """With an image extractor (Appendix E.4): the mean cosine between the generated representation and the
        extractor's representation of the generated image, and the same against the next sample's image as the
        chance level."""
        if not self.extractor_name:
            return {}
        gen, real = generated.float(), self.represent(images)
        key = f"{self.name}_cosine_{self.extractor_name}"
        out = {key: float(F.cosine_similarity(gen, real, dim=1).mean())}
        if len(gen) > 1:  # chance level: each generated representation against another sample's image
            out[f"{key}_other_sample"] = float(F.cosine_similarity(gen, real.roll(1, 0), dim=1).mean())
        return out

    def encode(self, x, backbone_encode=None):
        if self.encoder_name == "fixed":
            return (x.float() @ self.projection).reshape(-1, *self.z_shape)
        if backbone_encode is None:
            raise ValueError(f"modality {self.name!r} uses the backbone encoder; pass backbone_encode")
        return backbone_encode(self.condition(x))

    def loss(self, pred, x):
        return per_sample_mean((pred.float() - x.float()) ** 2)

    def estimate(self, pred):
        return pred.float()

    def condition(self, x):
        return self.token(x.float())[:, None]  # [B, 1, D]
