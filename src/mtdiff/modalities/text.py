"""The ``text`` kind: a caption, a pure condition read through cross-attention (Appendix E.4)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import ALL, Modality, given_rows
from .common import generator_device, resolve_dim

__all__ = ["TextModality"]


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

        resolve_dim(mc, key, "text_encoder", mc.text_encoder, TEXT_ENCODERS)
        for tpl in mc.templates:
            if tpl.count("{}") != 1:
                raise ValueError(f"{key}.templates: {tpl!r} must contain exactly one '{{}}' for the class name")

    @classmethod
    def resolve_from_data(cls, mc, data, *, key):
        """Captions are made from class names: the config's, else the data source's."""
        if mc.class_names:
            return
        if data.labels is None or not data.class_names:
            raise ValueError(
                f"{key} makes captions from class names, but {data.name!r} has no labelled classes; "
                f"set {key}.class_names"
            )
        mc.class_names = tuple(data.class_names)

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

    def askable_classes(self):
        return len(self.class_names)

    def ask_classes(self, classes):
        """The embeddings of the classes' first captions, and the class names."""
        return self.from_labels(classes), [self.class_names[int(k)] for k in classes]

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
            device=generator_device(generator, labels.device),
        ).to(labels.device)
        return self.from_labels(labels[rows], template[rows])

    def null(self, batch, *, device=None, dtype=torch.float32):
        return torch.zeros(batch, self.dim, device=device, dtype=dtype)  # no caption

    def condition(self, x):
        return self.token(x.float())[:, None]  # [B, 1, D]
