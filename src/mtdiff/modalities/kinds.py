"""The modality kinds of the paper's four settings: images (and masked images), labels,
per-pixel segmentation classes and representation vectors."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.masking import apply_mask, make_mask
from .base import ALL, BackboneEncode, Modality, given_rows

if TYPE_CHECKING:
    from ..config import ModalityConfig

__all__ = [
    "ImageModality",
    "MaskedImageModality",
    "LabelModality",
    "SegmentationModality",
    "VectorModality",
    "TextModality",
]


def _per_sample_mean(x: Tensor) -> Tensor:
    """[B, ...] -> [B]."""
    return x.reshape(x.shape[0], -1).mean(1)


def _check_classes(x: Tensor, num_classes: int, name: str) -> None:
    """Class indices must lie in [0, num_classes). On the CPU a clear error; on a GPU the check runs on the
    device and fails at the next synchronisation, so a training step never waits for the host."""
    if not x.numel():
        return
    if x.device.type != "cpu":
        torch._assert_async(
            ((x >= 0) & (x < num_classes)).all(), f"modality {name!r}: class indices must be in [0, {num_classes})"
        )
    elif int(x.min()) < 0 or int(x.max()) >= num_classes:
        raise ValueError(
            f"modality {name!r}: class indices must be in [0, {num_classes}), "
            f"got range [{int(x.min())}, {int(x.max())}]"
        )


def _generator_device(generator: torch.Generator | None, device) -> torch.device:
    """Where a draw from ``generator`` must happen (its own device; ``device`` for the global RNG)."""
    return generator.device if generator is not None else torch.device(device)


def _fixed_normal(seed: int, *shape: int) -> Tensor:
    """A fixed random map, reproducible from its seed and saved with the model as a buffer."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _check_num_classes(mc: ModalityConfig, key: str) -> None:
    if mc.num_classes < 2:
        raise ValueError(f"{key}.num_classes must be >= 2, got {mc.num_classes}")


def _resolve_dim(mc: ModalityConfig, key: str, what: str, name: str | None, known: Mapping[str, int]) -> None:
    """Vector and text widths: ``dim`` given, or known from the extractor / text encoder ``name`` (which must agree)."""
    if name in known:
        if mc.dim not in (0, known[name]):
            raise ValueError(f"{key}.dim={mc.dim} but {what} {name!r} gives {known[name]}-d vectors")
        mc.dim = known[name]
    if mc.dim <= 0:
        raise ValueError(f"{key}.dim must be > 0 for a {mc.kind} modality (or name a known {what}), got {mc.dim}")


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
        return torch.randn(batch, *self.z_shape, generator=generator, device=_generator_device(generator, device)).to(
            device
        )

    def encode(self, x, backbone_encode=None):
        return x

    def loss(self, pred, x):
        return _per_sample_mean((pred.float() - x.float()) ** 2)

    def estimate(self, pred):
        return pred.clamp(-1, 1) if self.clip else pred

    def condition(self, x):
        return x


class MaskedImageModality(ImageModality):
    """The paper's masked image (Section 4.1): the image with m ~ U{0..max_patches} square patches
    zeroed; ``full_mask_prob`` of training samples are fully masked, the input that the -X
    variant receives when it generates from scratch."""

    kind = "masked_image"
    value = "image"
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
            full = torch.rand(batch, generator=generator, device=_generator_device(generator, device)).to(device)
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


class _Discrete(Modality):
    """Shared parts of label-like modalities: data are indices or probability vectors."""

    num_classes: int

    def probs(self, x: Tensor) -> Tensor:
        """Indices [B, ...] or probabilities [B, K, ...] -> probabilities [B, K, ...] (float)."""
        if x.dtype in (torch.int64, torch.int32, torch.uint8, torch.int16):
            _check_classes(x, self.num_classes, self.name)
            oh = (
                x.long()[..., None] == torch.arange(self.num_classes, device=x.device)
            ).float()  # one-hot, no range read
            return oh.movedim(-1, 1) if oh.ndim > 2 else oh
        return x.float()

    def canonical(self, x):
        return self.probs(x)

    def _given_indices(self, x: Tensor, batch: int | None, shape: tuple[int, ...], what: str) -> Tensor:
        """Class indices [N, *shape] in [0, K) from a user's value (see ``Modality.given``)."""
        what = f"{what} of class indices in [0, {self.num_classes})"
        x = given_rows(x, batch, shape, what, floating=False)
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_classes):
            raise ValueError(f"expected {what}, got values in [{int(x.min())}, {int(x.max())}]")
        return x.long()

    def loss(self, pred, x):
        """Cross-entropy = the KL to the one-hot (or soft) target, up to the target's entropy."""
        logp = F.log_softmax(pred.float(), dim=1)
        return _per_sample_mean(-(self.probs(x) * logp).sum(1))

    def estimate(self, pred):
        return F.softmax(pred.float(), dim=1)


class LabelModality(_Discrete):
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

    @classmethod
    def configure(cls, mc, *, key, variant):
        by_variant = {"M": "middle", "E": "classifier"}.get(variant)  # MT-Diffusion-M / -E: the variant is the head
        if mc.head == "auto" and by_variant:
            mc.head = by_variant
        super().configure(mc, key=key, variant=variant)
        if by_variant and mc.head != by_variant:
            raise ValueError(
                f"{key}.head={mc.head!r} contradicts model.variant={variant!r} (M: head 'middle', E: head 'classifier')"
            )
        _check_num_classes(mc, key)

    @classmethod
    def config_options(cls, mc, *, context_dim, latent):
        return {"num_classes": mc.num_classes, "hidden": mc.hidden, "seed": mc.seed, "context_dim": context_dim}

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
        self.register_buffer("class_images", _fixed_normal(seed, num_classes, *self.z_shape))
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

    def encode(self, x, backbone_encode: BackboneEncode | None = None):
        p = self.probs(x)  # [B, K]
        if self.encoder_name == "fixed":
            return torch.einsum("bk,kchw->bchw", p, self.class_images.to(p))
        if backbone_encode is None:
            raise ValueError(f"modality {self.name!r} uses the backbone encoder; pass backbone_encode")
        return backbone_encode(self.condition(p))

    def condition(self, x):
        return self.token(self.probs(x))[:, None]  # [B, 1, D]


class SegmentationModality(_Discrete):
    """Per-pixel classes [B, H, W] (image translation, Appendix E.1). E maps each class to a fixed
    random vector in the diffusion space's channels; the head replicates the output block with
    one logit per class (``middle-up``: a dense head on the middle block, upsampled); the KL term is a
    per-pixel cross-entropy."""

    kind = "segmentation"
    value = "class_map"
    head_choices = ("output", "middle-up")
    encoder_choices = ("fixed",)
    default_source = "segmentation"
    translation_source = True
    latent_refusal = (
        "its class maps and head live at pixel resolution; in latent space they would need masks at "
        "the latent resolution, which mtdiff does not make"
    )

    @classmethod
    def configure(cls, mc, *, key, variant):
        super().configure(mc, key=key, variant=variant)
        _check_num_classes(mc, key)

    @classmethod
    def config_options(cls, mc, *, context_dim, latent):
        return {"num_classes": mc.num_classes, "seed": mc.seed}

    def __init__(
        self, name: str, *, num_classes: int, head: str = "output", encoder: str = "fixed", seed: int = 0, **kw
    ):
        super().__init__(name, head=head, encoder=encoder, **kw)
        self.num_classes = num_classes
        self.cond_channels = num_classes
        self.decoder = self._build_head(num_classes, image_size=self.z_shape[-1])
        self.register_buffer("class_values", _fixed_normal(seed, num_classes, self.z_shape[0]))

    def null(self, batch, *, device=None, dtype=torch.float32):
        return torch.full(
            (batch, self.num_classes, *self.z_shape[1:]), 1.0 / self.num_classes, device=device, dtype=dtype
        )  # uniform per pixel

    def given(self, value, batch=None):
        """Class maps [N, H, W] (or one map [H, W]) of class indices."""
        return self._given_indices(torch.as_tensor(value), batch, tuple(self.z_shape[1:]), "class maps")

    def encode(self, x, backbone_encode=None):
        return torch.einsum("bkhw,kc->bchw", self.probs(x), self.class_values.to(torch.float32))

    def condition(self, x):
        return self.probs(x)  # [B, K, H, W]


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
        _resolve_dim(mc, key, "extractor", mc.extractor, IMAGE_FEATURE_DIMS)

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
        self.register_buffer("projection", _fixed_normal(seed, dim, math.prod(self.z_shape)) / math.sqrt(dim))
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

    def encode(self, x, backbone_encode=None):
        if self.encoder_name == "fixed":
            return (x.float() @ self.projection).reshape(-1, *self.z_shape)
        if backbone_encode is None:
            raise ValueError(f"modality {self.name!r} uses the backbone encoder; pass backbone_encode")
        return backbone_encode(self.condition(x))

    def loss(self, pred, x):
        return _per_sample_mean((pred.float() - x.float()) ** 2)

    def estimate(self, pred):
        return pred.float()

    def condition(self, x):
        return self.token(x.float())[:, None]  # [B, 1, D]


class TextModality(Modality):
    """A caption, as a pure condition (Appendix E.4 feeds text through cross-attention): it does not
    enter the forward process and has no head, so the process and the loss are those of the other
    modalities; the backbone reads it as one cross-attention token in every variant.

    Data are sentence embeddings [B, D] of a frozen text encoder (``mtdiff.pretrained.text``). For
    labelled data the captions are made from class names and templates ("a photo of a {}"); their
    embeddings are computed once by ``prepare`` and kept as a buffer, so a trained run samples from
    its captions without the text encoder. "Nothing known" (caption dropout) is the zero vector."""

    kind = "text"
    value = "text"
    aggregates = False
    has_head = False
    uses_context = True
    head_choices = ("none",)
    encoder_choices = ("none",)
    default_source = "caption"
    token_input = True

    @classmethod
    def configure(cls, mc, *, key, variant):
        super().configure(mc, key=key, variant=variant)
        from ..pretrained.text import TEXT_ENCODERS

        _resolve_dim(mc, key, "text_encoder", mc.text_encoder, TEXT_ENCODERS)
        for tpl in mc.templates:
            if tpl.count("{}") != 1:
                raise ValueError(f"{key}.templates: {tpl!r} must contain exactly one '{{}}' for the class name")

    @classmethod
    def config_options(cls, mc, *, context_dim, latent):
        return {
            "dim": mc.dim,
            "class_names": mc.class_names,
            "templates": mc.templates,
            "text_encoder": mc.text_encoder,
            "context_dim": context_dim,
        }

    def __init__(
        self,
        name: str,
        *,
        dim: int,
        class_names: tuple[str, ...],
        templates: tuple[str, ...],
        text_encoder: str,
        context_dim: int,
        head: str = "none",
        encoder: str = "none",
        **kw,
    ):
        super().__init__(name, head=head, encoder=encoder, **kw)
        if context_dim <= 0:
            raise ValueError(f"modality {name!r}: a text condition needs model.context_dim > 0")
        self.dim, self.class_names, self.templates, self.text_encoder = (
            dim,
            tuple(class_names),
            tuple(templates),
            text_encoder,
        )
        self.register_buffer("captions", torch.zeros(len(self.class_names), len(self.templates), dim))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))
        self._ready = False
        self.token = nn.Linear(dim, context_dim)

    def caption(self, label: int, template: int = 0) -> str:
        return self.templates[template].format(self.class_names[label])

    def embed(self, captions: list[str]) -> Tensor:
        """Free text -> embeddings [N, D] with the run's text encoder (loaded on first use)."""
        from ..pretrained import load_text_encoder

        out = load_text_encoder(self.text_encoder)(captions)  # cached per process
        if out.shape[1] != self.dim:
            raise ValueError(
                f"modality {self.name!r}: text encoder {self.text_encoder!r} gives {out.shape[1]}-d "
                f"embeddings but dim={self.dim}"
            )
        return out

    def prepare(self) -> None:
        if not self._is_ready() and self.class_names:
            texts = [self.caption(k, j) for k in range(len(self.class_names)) for j in range(len(self.templates))]
            table = self.embed(texts).reshape(self.captions.shape)
            self.captions.copy_(table.to(self.captions))
            self.ready.fill_(True)
            self._ready = True

    def _is_ready(self) -> bool:
        """Whether the caption table is filled; the buffer (saved with the model) is read once, not per step."""
        if not self._ready:
            self._ready = bool(self.ready)
        return self._ready

    def from_labels(self, labels: Tensor, template: Tensor | None = None) -> Tensor:
        """Embeddings [B, D] of the captions of class ``labels`` [B] (template 0 unless given)."""
        if not self._is_ready():
            raise RuntimeError(f"modality {self.name!r}: captions are not encoded yet; call prepare()")
        template = torch.zeros_like(labels) if template is None else template
        return self.captions[labels.long(), template.long()]

    def data_shape(self):
        return (self.dim,)

    def given(self, value, batch=None):
        """Captions: text (one for all or one per sample), embedded by the run's text encoder; class indices or
        class names (their captions' embeddings, no text encoder needed); or embeddings [N, D]."""
        items = [value] if isinstance(value, (str, int)) else value
        if isinstance(items, (list, tuple)) and items and all(isinstance(v, str) for v in items):
            if not all(v in self.class_names for v in items):
                if not all(v.strip() for v in items):
                    raise ValueError(f"expected captions as non-empty text, got {items!r}")
                return given_rows(self.embed(list(items)).float().cpu(), batch, (self.dim,), "captions", floating=True)
            items = [self.class_names.index(v) for v in items]
        x = torch.as_tensor(items)
        if x.is_floating_point():
            return given_rows(x, batch, (self.dim,), "caption embeddings", floating=True)
        names = f"class indices in [0, {len(self.class_names)})" if self.class_names else "text"
        x = given_rows(x, batch, (), f"captions as {names}", floating=False)
        if not self.class_names or int(x.min()) < 0 or int(x.max()) >= len(self.class_names):
            raise ValueError(f"expected captions as {names}, got {value!r}")
        self.prepare()
        return self.from_labels(x.to(self.captions.device)).cpu()

    def derive(self, batch, generator, rows=ALL):
        if self.source in batch:
            return batch[self.source][rows]
        labels = batch["label"]
        template = torch.randint(
            0,
            len(self.templates),
            labels.shape,
            generator=generator,
            device=_generator_device(generator, labels.device),
        ).to(labels.device)
        return self.from_labels(labels[rows], template[rows])

    def null(self, batch, *, device=None, dtype=torch.float32):
        return torch.zeros(batch, self.dim, device=device, dtype=dtype)  # no caption

    def condition(self, x):
        return self.token(x.float())[:, None]  # [B, 1, D]
