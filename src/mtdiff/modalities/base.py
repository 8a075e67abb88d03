"""The Modality type: one object per modality says how its data enters the diffusion space
(encoder E_i), how it is read back out (head D_i) and how the head is scored (the KL term of Eq. 6).

A new modality is one subclass. Data of a modality is one tensor; discrete modalities accept
either class indices or probability vectors (what their head estimates during sampling).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..data.derived import DERIVED, derive
from .heads import HEADS

__all__ = ["Modality", "BackboneEncode"]

# (context tokens [B, L, D]) -> backbone eps output at z = 0, t = 0 (the "U-Net as encoder" option)
BackboneEncode = Callable[[Tensor], Tensor]


class Modality(nn.Module):
    """Base class. ``z_shape`` is the diffusion space [C, H, W]; ``features`` maps backbone feature
    names ("middle", "output") to channel counts, so the head can be built on them.

    Subclasses set ``kind``, ``head_choices`` and ``encoder_choices`` and implement the methods below.
    """
    kind: ClassVar[str] = ""
    head_choices: ClassVar[tuple[str, ...]] = ()
    encoder_choices: ClassVar[tuple[str, ...]] = ()
    aggregates: ClassVar[bool] = True  # whether E_i(x_i) enters the forward process (Eq. 3); False: a pure condition
    has_head: ClassVar[bool] = True    # whether a head D_i reads it back (a term of Eq. 6)
    cond_channels: int = 0       # channels this modality adds to the backbone input in the -X variant
    uses_context: bool = False   # whether it enters the backbone as cross-attention tokens

    def __init__(self, name: str, *, z_shape: tuple[int, int, int], features: Mapping[str, int],
                 head: str, encoder: str, source: str | None = None):
        super().__init__()
        for what, value, choices in (("head", head, self.head_choices), ("encoder", encoder, self.encoder_choices)):
            if value not in choices:
                raise ValueError(f"modality {name!r} ({self.kind}): {what} {value!r} is not one of {list(choices)}")
        self.name, self.z_shape, self.head_name, self.encoder_name = name, tuple(z_shape), head, encoder
        self.source = source or name
        self.features = dict(features)

    def _build_head(self, out: int, **kw) -> nn.Module:
        head = HEADS[self.head_name]
        return head(self.features[head.feature], out, **kw)

    def prepare(self) -> None:
        """Load what lives outside the checkpoint (frozen pretrained encoders). Called before training
        from scratch and lazily at inference; a no-op for most kinds."""

    # -- data ------------------------------------------------------------------------------
    def derive(self, batch: Mapping[str, Tensor], generator: torch.Generator | None) -> Tensor:
        """This modality's data x_i from a training batch: ``batch[source]``, or a modality derived
        from the image (``source`` = "class_mask" or "edges", see ``mtdiff.data.derived``)."""
        if self.source in batch:
            return batch[self.source]
        if self.source in DERIVED:
            return derive(self.source, batch["image"], batch.get("label"))
        raise KeyError(f"modality {self.name!r} reads batch[{self.source!r}], but the batch has {sorted(batch)} "
                       f"and the derived modalities are {sorted(DERIVED)}")

    def init_unknown(self, batch: int, *, generator: torch.Generator | None, device) -> Tensor:
        """Initial data for Algorithm 1, line 3: random, or the value that says "nothing known"."""
        raise NotImplementedError

    def canonical(self, x: Tensor) -> Tensor:
        """The float form of the data (class indices become probability vectors)."""
        return x.float()

    def drop(self, x: Tensor, dropped: Tensor) -> Tensor:
        """x with the samples where ``dropped`` [B] is True replaced by the "nothing known" value of
        ``init_unknown`` (condition dropout for classifier-free guidance)."""
        x = self.canonical(x)
        null = self.init_unknown(x.shape[0], generator=None, device=x.device).to(x.dtype)
        return torch.where(dropped.reshape(-1, *([1] * (x.ndim - 1))), null, x)

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
