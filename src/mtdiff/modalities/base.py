"""The Modality type: one object per modality says how its data enters the diffusion space
(encoder E_i), how it is read back out (head D_i) and how the head is scored (the KL term of Eq. 6).

A new modality kind is one module with one subclass: setting ``kind`` registers it in :data:`MODALITY_KINDS`,
which config validation (``configure``) and the builder (``from_config``) ask, so a config may name it at once.
Everything outside this package asks the kind, never its name: what a user gives (``value``, ``given``), how a
value is drawn (``draw``, ``describe``), which classes it can be asked for (``askable_classes``, ``ask_classes``),
which scores apply to it (``sample_scores``, ``translation_scores``) and what it checks in the data
(``check_data``, ``resolve_from_data``).
Data of a modality is one tensor; discrete modalities accept either class indices or probability
vectors (what their head estimates during sampling).

Two initial values, not to be confused:

- ``null``: "nothing known" about the modality, a fixed value (no random draw). Condition dropout
  (``train.cond_drop_prob``), encoding dropout (``train.enc_drop_prob``), the unconditional branch of
  classifier-free guidance, inverse mode and the -X backbone inputs of joint generation all use it,
  so training and sampling agree, on every process and whatever the global RNG did.
- ``init_unknown``: where the sampler starts a modality it generates (Algorithm 1, line 3); random
  draws come from the sampler's generator only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from ..data.derived import DERIVED, derive
from .heads import HEADS

if TYPE_CHECKING:
    from ..config import ModalityConfig
    from ..data.imageset import ImageSet

__all__ = ["ALL", "Modality", "BackboneEncode", "ReadBack", "MODALITY_KINDS", "VALUE_TYPES", "given_rows"]

# (context tokens [B, L, D]) -> backbone eps output at z = 0, t = 0 (the "U-Net as encoder" option)
BackboneEncode = Callable[[Tensor], Tensor]
# images [N, C, H, W] in pixels -> a modality's head estimate read from them (inverse mode), for scores
ReadBack = Callable[[Tensor], Tensor]
ALL = slice(None)  # every row of a batch

MODALITY_KINDS: dict[str, type[Modality]] = {}
"""Kind name (``modalities.<name>.kind``) -> class; a subclass that sets ``kind`` enters it when defined."""


VALUE_TYPES = ("image", "class", "class_map", "vector", "text")
"""What a user gives and gets back of a modality (``Modality.value``), so that a front end (the CLI, an app)
picks its inputs and outputs without knowing kind names: ``image`` pixels [C, H, W] in [-1, 1] (a masked image
too: the image with the pixels it keeps); ``class`` a class index (or probabilities); ``class_map`` per-pixel
class indices [H, W]; ``vector`` a feature vector; ``text`` a caption."""


def given_rows(x: Tensor, batch: int | None, shape: tuple[int, ...], what: str, *, floating: bool) -> Tensor:
    """``x`` as [N, *shape] (one sample may come without its batch axis), N = 1 or ``batch``, floats or integers
    as ``floating`` says; a ValueError naming ``what`` was expected otherwise."""
    if x.ndim == len(shape):
        x = x[None]
    dims = ", ".join(["N" if batch is None else f"1 or {batch}", *map(str, shape)])
    if tuple(x.shape[1:]) != tuple(shape) or len(x) == 0 or (batch is not None and len(x) not in (1, batch)):
        raise ValueError(f"expected {what} [{dims}], got {tuple(x.shape)}")
    if x.is_floating_point() != floating:
        raise ValueError(f"expected {what} as {'floats' if floating else 'integers'}, got {x.dtype}")
    return x


class Modality(nn.Module):
    """Base class. ``z_shape`` is the diffusion space [C, H, W]; ``features`` maps backbone feature
    names ("middle", "output") to channel counts, so the head can be built on them.

    Subclasses set ``kind``, ``head_choices`` and ``encoder_choices`` (the first of each is the ``auto``
    choice) and ``default_source``, and implement the methods below; ``configure`` and ``config_options``
    when the kind reads more of its config than head, encoder and source.
    """

    kind: ClassVar[str] = ""
    head_choices: ClassVar[tuple[str, ...]] = ()
    encoder_choices: ClassVar[tuple[str, ...]] = ()
    default_source: ClassVar[str] = ""  # the batch key (or derived modality) of its data unless the config names one
    aggregates: ClassVar[bool] = True  # whether E_i(x_i) enters the forward process (Eq. 3); False: a pure condition
    has_head: ClassVar[bool] = True  # whether a head D_i reads it back (a term of Eq. 6)
    token_input: ClassVar[bool] = False  # as a backbone input (-X): a cross-attention token (else input channels)
    image_data: ClassVar[bool] = False  # its data are images: they go through data.autoencoder's map with z_0
    latent_refusal: ClassVar[str] = ""  # why the kind cannot be used with data.autoencoder ("": it can)
    translation_source: ClassVar[bool] = False  # per-pixel data of another domain that images translate from (E.1)
    value: ClassVar[str] = ""  # what a user gives and gets back (one of VALUE_TYPES)
    image_view: ClassVar[bool] = False  # its data are a view of the image (``view_of_image``): restored with it
    # model.variant -> the head that variant puts on this kind (MT-Diffusion-M / -E: a label head on the middle
    # block / the output); a config of a variant named here needs a modality of such a kind
    variant_heads: ClassVar[Mapping[str, str]] = {}
    cond_channels: int = 0  # channels this modality adds to the backbone input in the -X variant
    uses_context: bool = False  # whether it enters the backbone as cross-attention tokens

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        kind = cls.__dict__.get("kind")
        if not kind:
            return
        known = MODALITY_KINDS.get(kind)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(
                f"modality kind {kind!r} is defined twice: by {known.__module__}.{known.__qualname__} "
                f"and by {cls.__module__}.{cls.__qualname__}"
            )
        if cls.value not in VALUE_TYPES:
            raise TypeError(f"modality kind {kind!r}: value {cls.value!r} is not one of {VALUE_TYPES}")
        MODALITY_KINDS[kind] = cls

    # -- from a config ---------------------------------------------------------------------
    @classmethod
    def is_pure_condition(cls) -> bool:
        """No forward-process term and no head (a caption): only ever a backbone input, in every variant."""
        return not cls.aggregates and not cls.has_head

    @classmethod
    def configure(cls, mc: ModalityConfig, *, key: str, variant: str) -> None:
        """Resolve the ``auto`` choices of this kind's config ``mc`` in place and check its kind's fields.
        Config validation calls it before any work; a problem is a ValueError whose message names the key
        (``key`` is "modalities.<name>"), which validation raises as a ConfigError. A variant in
        ``variant_heads`` picks the head (``auto``) and refuses another."""
        by_variant = cls.variant_heads.get(variant)
        if mc.head == "auto":
            mc.head = by_variant or cls.head_choices[0]
        if mc.encoder == "auto":
            mc.encoder = cls.encoder_choices[0]
        for what, value, choices in (("head", mc.head, cls.head_choices), ("encoder", mc.encoder, cls.encoder_choices)):
            if value not in choices:
                raise ValueError(
                    f"{key}.{what}: {value!r} is not valid for kind {cls.kind!r}; choose one of {list(choices)}"
                )
        if by_variant and mc.head != by_variant:
            heads = ", ".join(f"{v}: head {h!r}" for v, h in cls.variant_heads.items())
            raise ValueError(f"{key}.head={mc.head!r} contradicts model.variant={variant!r} ({heads})")
        mc.source = mc.source or cls.default_source or None
        if mc.head_detach and not cls.has_head:
            raise ValueError(f"{key}.head_detach: kind {cls.kind!r} has no head to detach")
        if mc.loss_weight != 1.0 and not cls.has_head:
            raise ValueError(f"{key}.loss_weight: kind {cls.kind!r} has no head, so no loss term to weight")
        if mc.loss_weight < 0:
            raise ValueError(f"{key}.loss_weight must be >= 0, got {mc.loss_weight}")

    @classmethod
    def config_options(cls, mc: ModalityConfig, *, context_dim: int, latent: bool) -> dict[str, Any]:
        """The kind's own constructor arguments from its (configured) config; none in the base."""
        return {}

    @classmethod
    def check_data(cls, mc: ModalityConfig, data: ImageSet, *, key: str) -> None:
        """Check the configured ``mc`` against the data set it will read (``mtdiff.build.load_data``); a
        ValueError naming ``key`` otherwise. Nothing to check in the base."""

    @classmethod
    def resolve_from_data(cls, mc: ModalityConfig, data: ImageSet, *, key: str) -> None:
        """Fill in place what ``mc`` leaves to the training data (a caption's class names), before training;
        a ValueError naming ``key`` when the data cannot say. Nothing in the base."""

    @classmethod
    def from_config(
        cls,
        name: str,
        mc: ModalityConfig,
        *,
        z_shape: tuple[int, int, int],
        features: Mapping[str, int],
        context_dim: int = 0,
        latent: bool = False,
    ) -> Modality:
        """The modality ``name`` of a configured ``mc``. ``context_dim``: the cross-attention width when it
        enters the backbone as tokens (a -X input, or through the backbone encoder), else 0; ``latent``:
        the diffusion space is an autoencoder's latent space."""
        return cls(
            name,
            z_shape=z_shape,
            features=features,
            head=mc.head,
            encoder=mc.encoder,
            source=mc.source,
            head_detach=mc.head_detach,
            loss_weight=mc.loss_weight,
            **cls.config_options(mc, context_dim=context_dim, latent=latent),
        )

    def __init__(
        self,
        name: str,
        *,
        z_shape: tuple[int, int, int],
        features: Mapping[str, int],
        head: str,
        encoder: str,
        source: str | None = None,
        head_detach: bool = False,
        loss_weight: float = 1.0,
    ):
        super().__init__()
        for what, value, choices in (("head", head, self.head_choices), ("encoder", encoder, self.encoder_choices)):
            if value not in choices:
                raise ValueError(f"modality {name!r} ({self.kind}): {what} {value!r} is not one of {list(choices)}")
        self.name, self.z_shape, self.head_name, self.encoder_name = name, tuple(z_shape), head, encoder
        self.source = source or name
        self.features = dict(features)
        self.head_detach = head_detach  # in training, the head reads the backbone's features under stop-gradient
        self.loss_weight = float(loss_weight)  # lambda_i: its head's term in Eq. 6 is lambda * lambda_i * KL_i

    def _build_head(self, out: int, **kw) -> nn.Module:
        head = HEADS[self.head_name]
        return head(self.features[head.feature], out, **kw)

    def prepare(self) -> None:
        """Load what lives outside the checkpoint (frozen pretrained encoders). Called before training
        from scratch and lazily at inference; a no-op for most kinds."""

    # -- data ------------------------------------------------------------------------------
    def derive(self, batch: Mapping[str, Tensor], generator: torch.Generator | None, rows: slice = ALL) -> Tensor:
        """This modality's data x_i for the ``rows`` of a training batch: ``batch[source]``, or a modality
        derived from the image (``source`` = "class_mask" or "edges", see ``mtdiff.data.derived``). A kind
        that draws at random (masks, caption templates) draws for the whole batch and keeps ``rows``, so
        every process of a torchrun job draws the same and computes only its own share."""
        if self.source in batch:
            return batch[self.source][rows]
        if self.source in DERIVED:
            labels = batch.get("label")
            return derive(self.source, batch["image"][rows], None if labels is None else labels[rows])
        raise KeyError(
            f"modality {self.name!r} reads batch[{self.source!r}], but the batch has {sorted(batch)} "
            f"and the derived modalities are {sorted(DERIVED)}"
        )

    def null(self, batch: int, *, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
        """ "Nothing known" about this modality: [batch, ...] in the canonical (float) form, the same every
        call, from no random draw. What condition and encoding dropout put in training, and what the
        unconditional branch of guidance, inverse mode and -X joint generation feed the model."""
        raise NotImplementedError

    def init_unknown(self, batch: int, *, generator: torch.Generator | None, device) -> Tensor:
        """The sampler's start for a modality it generates (Algorithm 1, line 3): ``null`` unless the kind
        starts from noise, which is then drawn from ``generator`` (on its device) and moved to ``device``."""
        return self.null(batch, device=device)

    def canonical(self, x: Tensor) -> Tensor:
        """The float form of the data (class indices become probability vectors)."""
        return x.float()

    def drop(self, x: Tensor, dropped: Tensor) -> Tensor:
        """x with the samples where ``dropped`` [B] is True replaced by :meth:`null` (condition dropout for
        classifier-free guidance, encoding dropout for inverse mode)."""
        x = self.canonical(x)
        null = self.null(x.shape[0], device=x.device, dtype=x.dtype)
        return torch.where(dropped.reshape(-1, *([1] * (x.ndim - 1))), null, x)

    # -- values a user gives (``Run.generate``) --------------------------------------------
    def given(self, value: Any, batch: int | None = None) -> Tensor:
        """A value a user gives for this modality as data [N, ...]: here a float tensor of the data's shape
        (``data_shape``), one row or ``batch`` rows; a ValueError says what was expected. Kinds whose users
        speak in class indices or text override it; image-like data arrive as pixels already mapped."""
        return given_rows(torch.as_tensor(value), batch, self.data_shape(), f"{self.kind} data", floating=True)

    def askable_classes(self) -> int:
        """How many classes a user can ask for through this modality (``Run.sample(labels=...)``); 0: none."""
        return 0

    def ask_classes(self, classes: Tensor) -> tuple[Tensor, list[str]]:
        """Known data asking for ``classes`` [N] (indices below ``askable_classes``), and a short caption each."""
        raise NotImplementedError(f"modality {self.name!r} ({self.kind}) cannot be asked for classes")

    def data_shape(self) -> tuple[int, ...]:
        """The shape of one sample's data (float form)."""
        return tuple(self.z_shape)

    def view_of_image(self, image: Tensor, keep: Tensor) -> Tensor | None:
        """This modality's value when the image is known on the pixels where ``keep`` [N, 1, H, W] is 1, if the
        modality is a view of the image (a masked image); None otherwise."""
        return None

    # -- how a value is shown and scored ---------------------------------------------------
    def draw(self, x: Tensor) -> Tensor | None:
        """A picture of data ``x`` [N, ...] for grids and the report: [N, C, H, W] in [-1, 1]; None for a kind
        whose value is no picture (``describe`` may print it)."""
        return None

    def describe(self, x: Tensor) -> list[str] | None:
        """A short text per sample of data ``x`` [N, ...] to print on a grid; None for a kind with none."""
        return None

    def sample_scores(self, generated: Tensor, images: Tensor) -> dict[str, float]:
        """Scores of this modality's values ``generated`` [N, ...] in joint samples against the images [N, C, H, W]
        (pixels) generated with them, keyed by ``<name>_<score>``; none in the base."""
        return {}

    def translation_scores(
        self, source: Tensor, generated: Tensor, real: Tensor | None, read: ReadBack
    ) -> dict[str, float]:
        """Scores of images ``generated`` [N, C, H, W] from ``source`` (this modality's data, Appendix E.1);
        ``real``: the ground-truth images or None; ``read(images)``: this modality's head estimate from images
        (inverse mode); none in the base."""
        return {}

    # -- encoder E_i, head D_i, likelihood -------------------------------------------------
    def encode(self, x: Tensor, backbone_encode: BackboneEncode | None = None) -> Tensor:
        """E_i(x_i): [B, *z_shape]. No trainable parameters or under stop-gradient (Section 2.2.4)."""
        raise NotImplementedError

    def head(self, features: Mapping[str, Tensor]) -> Tensor:
        """D_i(c_t): the head's raw output (logits or values)."""
        return self.decoder(features)

    def loss(self, pred: Tensor, x: Tensor) -> Tensor:
        """Per-sample KL(q_i(x_i) || p_theta(x_i | z_t)) up to a constant: [B] (Eq. 6)."""
        raise NotImplementedError

    def estimate(self, pred: Tensor) -> Tensor:
        """Turn the head's output into data of this modality (Algorithm 1, line 10)."""
        raise NotImplementedError

    def condition(self, x: Tensor) -> Tensor:
        """Backbone input for the -X variant: channels [B, c, H, W] or tokens [B, L, D]."""
        raise NotImplementedError(f"modality {self.name!r} ({self.kind}) cannot be a backbone input")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, head={self.head_name!r}, encoder={self.encoder_name!r}"
