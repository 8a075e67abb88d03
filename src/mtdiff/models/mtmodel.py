"""The reverse model: a shared backbone plus one head per modality (Section 2.2.3, Figure 3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .unet import UNet

if TYPE_CHECKING:
    from ..modalities.base import Modality
    from ..process.prediction import Prediction

__all__ = ["MTModel"]

_NULL_TOLERANCE = 1e-6  # relative: what separates E_i(x_i) from E_i(null) computed by the same kernels


class MTModel(nn.Module):
    """eps_theta and the heads D_i on one backbone.

    ``conditioned`` lists the modalities fed to the backbone as inputs: empty is MT-Diffusion-U,
    eps_theta(z_t, t); non-empty is MT-Diffusion-X, eps_theta(z_t, X, t). Image-like modalities
    enter as extra input channels, label, vector and text modalities as cross-attention tokens.
    A pure condition (a caption: ``aggregates`` and ``has_head`` False) is an input in every variant.

    ``encoded_flags``: the backbone is also told which encodings formed z_t (:meth:`encoded`), by a learned
    vector per aggregating modality added to its time embedding (zero at the start; all flags off is the plain
    network). Without it the network must tell from z_t alone which of its shifts are "nothing known" ones,
    which it learns for one modality but not reliably for several (docs/RESULTS.md, "One model, every modality").
    """

    def __init__(
        self,
        backbone: UNet,
        modalities: Sequence[Modality],
        *,
        conditioned: Sequence[str] = (),
        prediction: Prediction | None = None,
        encoded_flags: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.prediction = prediction  # the backbone's output space (None: eps) and the loss weighting
        self.modalities = nn.ModuleDict({m.name: m for m in modalities})
        unknown = [c for c in conditioned if c not in self.modalities]
        if unknown:
            raise ValueError(f"conditioned modalities {unknown} are not among {list(self.modalities)}")
        self.conditioned = tuple(conditioned)
        self.flagged = tuple(n for n, m in self.modalities.items() if m.aggregates) if encoded_flags else ()
        self.flag_embed = nn.Linear(len(self.flagged), backbone.emb_dim, bias=False) if self.flagged else None
        if self.flag_embed is not None:
            nn.init.zeros_(self.flag_embed.weight)
        for name, m in self.modalities.items():
            token = getattr(m, "token", None)
            if token is not None and m.aggregates and name not in self.conditioned:
                # reached only through the backbone encoder's stop-gradient (Appendix E.3): a fixed random
                # map, frozen so that no optimizer or DDP waits for a gradient it never gets
                token.requires_grad_(False)

    @property
    def z_shape(self) -> tuple[int, ...]:
        return (self.backbone.in_channels, self.backbone.image_size, self.backbone.image_size)

    def prepare(self) -> MTModel:
        """Load each modality's frozen outside parts (text encoder captions, image extractors)."""
        for m in self.modalities.values():
            m.prepare()
        return self

    def derive(
        self, batch: Mapping[str, Tensor], generator: torch.Generator | None, rows: slice = slice(None)
    ) -> dict[str, Tensor]:
        """The modality data X of the ``rows`` of a pixel batch, each modality's from its source (masks drawn
        from ``generator`` for the whole batch, the same on every process)."""
        return {name: m.derive(batch, generator, rows) for name, m in self.modalities.items()}

    # -- encoders ------------------------------------------------------------------------
    def _backbone_encode(self, context: Tensor) -> Tensor:
        """The "U-Net as encoder" option: eps_theta(z = 0, t = 0; context) under stop-gradient (Appendix E.3)."""
        with torch.no_grad():
            b = context.shape[0]
            z = torch.zeros(b, *self.z_shape, device=context.device, dtype=context.dtype)
            t = torch.zeros(b, dtype=torch.long, device=context.device)
            cond = None
            if self.backbone.cond_channels:
                cond = torch.zeros(b, self.backbone.cond_channels, *self.z_shape[1:], device=context.device)
            # .forward, not the call: under train.compile the call is the compiled training graph, and this
            # pass (other inputs, other batch sizes) would compile the whole backbone again, each time
            return self.backbone.forward(z, t, cond=cond, context=context.detach())["eps"].detach()

    def encode(self, data: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """E_i(x_i) for every modality present in ``data`` (Algorithm 1 line 7, Algorithm 2 line 4)."""
        return {
            name: self.modalities[name].encode(x, self._backbone_encode)
            for name, x in data.items()
            if name in self.modalities and self.modalities[name].aggregates
        }

    @torch.no_grad()
    def encoded(self, enc: Mapping[str, Tensor], batch: int, device=None) -> Tensor:
        """[batch, len(flagged)]: 1 where modality i's encoding in ``enc`` is not its "nothing known" one
        E_i(null) (``Modality.null``), else 0, also where ``enc`` lacks it. The same rule serves training
        (encoding dropout puts E_i(null)) and sampling (a held modality keeps E_i(null); a given one, or a
        generated one once its head has estimated it, does not), so no sampler has to say what it did.
        E_i(null) is encoded here at the batch's size, in the ambient precision, so that a null row comes out
        of the same kernels as the caller's and matches it to the last bit or nearly."""
        cols = []
        for name in self.flagged:
            e = enc.get(name)
            if e is None:
                cols.append(torch.zeros(batch, device=device))
                continue
            m = self.modalities[name]
            null = m.encode(m.null(e.shape[0], device=e.device), self._backbone_encode).float()
            gap = (e.float() - null).flatten(1).abs().amax(1)  # [B]
            cols.append((gap > _NULL_TOLERANCE * (1 + null.abs().amax())).float())
        return torch.stack(cols, 1)

    # -- reverse model -------------------------------------------------------------------
    def _inputs(self, data: Mapping[str, Tensor] | None) -> tuple[Tensor | None, Tensor | None]:
        """Backbone inputs of the -X variant: (extra channels, cross-attention tokens)."""
        if not self.conditioned:
            return None, None
        data = data or {}
        missing = [n for n in self.conditioned if n not in data]
        if missing:
            raise ValueError(f"MT-Diffusion-X needs data for {missing} as backbone input; got {sorted(data)}")
        chans = [self.modalities[n].condition(data[n]) for n in self.conditioned if not self.modalities[n].uses_context]
        toks = [self.modalities[n].condition(data[n]) for n in self.conditioned if self.modalities[n].uses_context]
        cond = torch.cat(chans, 1) if chans else None  # [B, sum c_i, H, W]
        context = torch.cat(toks, 1) if toks else None  # [B, L, D]
        return cond, context

    def forward(
        self,
        z: Tensor,
        t: Tensor,
        data: Mapping[str, Tensor] | None = None,
        enc: Mapping[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(backbone output, {name: head output}) for z_t [B, C, H, W] at timesteps t [B]; the output is
        eps_theta, or v or z_0 where ``prediction`` says so (:meth:`predict` always returns eps). ``enc``: the
        encodings that formed z_t, read with ``encoded_flags`` only (default: those of ``data``). In training a
        head with ``head_detach`` reads the features under stop-gradient (its loss then shapes only the head);
        in eval mode it reads them as they are, so head guidance still differentiates through the backbone."""
        cond, context = self._inputs(data)
        emb = None
        if self.flag_embed is not None:
            flags = self.encoded(self.encode(data or {}) if enc is None else enc, z.shape[0], z.device)
            emb = self.flag_embed(flags.to(self.flag_embed.weight.dtype))
        feats = self.backbone(z, t, cond=cond, context=context, emb=emb)
        detach = self.training and any(m.head_detach for m in self.modalities.values())
        detached = {k: v.detach() for k, v in feats.items()} if detach else feats
        heads = {n: m.head(detached if m.head_detach else feats) for n, m in self.modalities.items() if m.has_head}
        return feats["eps"], heads

    @torch.no_grad()
    def predict(
        self, z: Tensor, t: Tensor, data: Mapping[str, Tensor] | None = None, enc: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(eps_theta, {name: estimated x_i}) for sampling (Algorithm 1 lines 8-10). ``enc``: the encodings
        that formed z_t (default: those of ``data``); a v or z_0 output needs them to become eps."""
        out, preds = self(z, t, data, enc)
        eps = self.to_eps(out, z, t, data, enc)
        return eps.to(z.dtype), {name: self.modalities[name].estimate(p) for name, p in preds.items()}

    def to_eps(
        self,
        out: Tensor,
        z: Tensor,
        t: Tensor,
        data: Mapping[str, Tensor] | None,
        enc: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """The backbone output as eps (the identity for an eps-prediction model)."""
        if self.prediction is None or self.prediction.space.is_eps:
            return out
        return self.prediction.eps(out.float(), z.float(), t, self.encode(data or {}) if enc is None else enc)

    def init_data(
        self, names: Sequence[str], batch: int, *, generator: torch.Generator | None, device
    ) -> dict[str, Tensor]:
        """The sampler's start for the modalities it generates (Algorithm 1 line 3; ``Modality.init_unknown``):
        random draws from ``generator``. Not "nothing known": that is :meth:`null_data`."""
        return {n: self.modalities[n].init_unknown(batch, generator=generator, device=device) for n in names}

    def null_data(self, names: Sequence[str], batch: int, *, device=None) -> dict[str, Tensor]:
        """ "Nothing known" for ``names`` (``Modality.null``): fixed values, no random draw, as in condition
        and encoding dropout. The unconditional branch of guidance, inverse mode and joint generation use it."""
        return {n: self.modalities[n].null(batch, device=device) for n in names}
