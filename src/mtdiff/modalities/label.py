"""The ``label`` kind: a class label (Section 4.2), read back by the label head of MT-Diffusion-M / -E."""

from __future__ import annotations

import torch
from torch import nn

from .base import BackboneEncode, given_rows
from .common import fixed_normal
from .discrete import Discrete

__all__ = ["LabelModality"]


class LabelModality(Discrete):
    """A class label (Section 4.2). Encoders: ``fixed`` (a fixed random image per class, mixed by the
    class probabilities) or ``backbone`` (the shared U-Net run on z = 0, t = 0 with the label as a
    cross-attention token, under stop-gradient; Appendix E.3). Heads: ``middle`` (MLP on the middle
    block, MT-Diffusion-M) or ``classifier`` (on the output, MT-Diffusion-E)."""

    kind = "label"
    value = "class"
    head_choices = ("middle", "classifier")
    encoder_choices = ("fixed", "backbone")
    default_source = "label"
    token_input = True
    variant_heads = {"M": "middle", "E": "classifier"}  # MT-Diffusion-M / -E: the variant is the head

    @classmethod
    def config_options(cls, mc, *, context_dim, latent):
        return {"num_classes": mc.num_classes, "hidden": mc.hidden, "seed": mc.seed, "context_dim": context_dim}

    @classmethod
    def check_data(cls, mc, data, *, key):
        if data.labels is None:
            raise ValueError(f"{key} is a label modality but {data.name!r} has no labels")
        if int(data.labels.max()) >= mc.num_classes:
            raise ValueError(
                f"{key}.num_classes={mc.num_classes} but {data.name!r} has labels up to {int(data.labels.max())}"
            )

    def __init__(
        self,
        name: str,
        *,
        num_classes: int,
        head: str = "middle",
        encoder: str = "fixed",
        context_dim: int = 0,
        hidden: int = 0,
        seed: int = 0,
        **kw,
    ):
        super().__init__(name, head=head, encoder=encoder, **kw)
        if num_classes < 2:
            raise ValueError(f"modality {name!r}: num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.decoder = self._build_head(num_classes, hidden=hidden, image_size=self.z_shape[-1])
        self.register_buffer("class_images", fixed_normal(seed, num_classes, *self.z_shape))
        self.uses_context = encoder == "backbone" or context_dim > 0
        if self.uses_context:
            if context_dim <= 0:
                raise ValueError(f"modality {name!r}: the backbone encoder needs model.context_dim > 0")
            self.token = nn.Linear(num_classes, context_dim, bias=False)

    def null(self, batch, *, device=None, dtype=torch.float32):
        return torch.full((batch, self.num_classes), 1.0 / self.num_classes, device=device, dtype=dtype)  # uniform

    def given(self, value, batch=None):
        """Class indices: one for every sample, one per sample, or "each" (the classes in turn; one of each
        without ``batch``); or class probabilities [N, K]."""
        if isinstance(value, str):
            if value != "each":
                raise ValueError(f"expected class indices in [0, {self.num_classes}) or 'each', got {value!r}")
            return torch.arange(batch or self.num_classes) % self.num_classes
        x = torch.as_tensor(value)
        if x.is_floating_point() and x.ndim in (1, 2) and x.shape[-1] == self.num_classes:
            return given_rows(x, batch, (self.num_classes,), "class probabilities", floating=True)
        return self._given_indices(x, batch, (), "labels")

    def askable_classes(self):
        return self.num_classes

    def ask_classes(self, classes):
        return classes, [str(int(k)) for k in classes]

    def describe(self, x):
        """The class index (the most probable class of probabilities)."""
        return [str(int(k)) for k in (x.argmax(1) if x.ndim == 2 else x)]

    def encode(self, x, backbone_encode: BackboneEncode | None = None):
        p = self.probs(x)  # [B, K]
        if self.encoder_name == "fixed":
            return torch.einsum("bk,kchw->bchw", p, self.class_images.to(p))
        if backbone_encode is None:
            raise ValueError(f"modality {self.name!r} uses the backbone encoder; pass backbone_encode")
        return backbone_encode(self.condition(p))

    def condition(self, x):
        return self.token(self.probs(x))[:, None]  # [B, 1, D]
