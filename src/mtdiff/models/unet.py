"""ADM-style U-Net backbone (Dhariwal & Nichol, 2021) for MT-Diffusion.

The network returns its intermediate features as well as the noise prediction so that
modality heads can be attached to the shared trunk: ``{"middle", "output", "eps"}``.

Every block takes ``(x, emb, context)`` so the trunk is a plain list of stages that can be
gradient-checkpointed uniformly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["UNet", "output_block", "timestep_embedding", "group_norm"]


# ---------------------------------------------------------------------------- helpers


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with at least 4 channels per group and at most 32 groups.

    One channel per group (instance norm) removes each channel's spatial mean, so a small
    network could not carry the image's mean brightness from z_t to eps; samples then come
    out with grey backgrounds. ADM's 32 groups are kept from 128 channels up.
    """
    limit = max(1, min(32, channels // 4))
    groups = next(g for g in range(limit, 0, -1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def zero_(module: nn.Module) -> nn.Module:
    """Zero all parameters of ``module`` in place (residual branches start as identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000) -> Tensor:
    """Sinusoidal embedding of timesteps ``t: [B]`` -> ``[B, dim]`` (float32, [cos | sin])."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) / half * torch.arange(half, dtype=torch.float32, device=t.device))
    args = t.float()[:, None] * freqs[None]  # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, 2 * half]
    return F.pad(emb, (0, dim % 2))  # [B, dim]


def output_block(channels_in: int, channels_out: int) -> nn.Sequential:
    """ADM output block: GroupNorm -> SiLU -> zero-initialised Conv3x3."""
    return nn.Sequential(group_norm(channels_in), nn.SiLU(), zero_(nn.Conv2d(channels_in, channels_out, 3, padding=1)))


# ---------------------------------------------------------------------------- blocks


class Stage(nn.Sequential):
    """A sequence of blocks that all take ``(x, emb, context)``."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None = None) -> Tensor:
        for block in self:
            x = block(x, emb, context)
        return x


class Conv(nn.Conv2d):
    """Conv2d with the uniform block signature (the stem)."""

    def forward(self, x: Tensor, emb: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        return super().forward(x)


class Downsample(nn.Module):
    """Strided 3x3 conv, halves the resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        return self.conv(x)  # [B, C, H/2, W/2]


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))  # [B, C, 2H, 2W]


class ResBlock(nn.Module):
    """Residual block with timestep conditioning; optionally resamples (BigGAN-style up/down)."""

    def __init__(
        self,
        channels: int,
        emb_dim: int,
        out_channels: int | None = None,
        *,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = True,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_act = nn.Sequential(group_norm(channels), nn.SiLU())
        self.resample = (
            nn.Upsample(scale_factor=2, mode="nearest") if up else nn.AvgPool2d(2) if down else nn.Identity()
        )
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels * (2 if use_scale_shift_norm else 1)))
        self.out_norm = group_norm(out_channels)
        self.out = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), zero_(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        )
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None = None) -> Tensor:
        h = self.in_conv(self.resample(self.in_act(x)))  # [B, C_out, H', W']
        x = self.resample(x)  # [B, C_in, H', W']
        e = self.emb(emb)[:, :, None, None].to(h.dtype)  # [B, (2*)C_out, 1, 1]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        return self.skip(x) + self.out(h)  # [B, C_out, H', W']


def _heads(q: Tensor, heads: int) -> Tensor:
    """[B, L, C] -> [B, heads, L, C/heads]."""
    return q.unflatten(-1, (heads, -1)).transpose(1, 2)


class CrossAttention(nn.Module):
    """Image tokens attend to context tokens ``[B, L, context_dim]``; zero-init output."""

    def __init__(self, channels: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = group_norm(channels)
        self.context_norm = nn.LayerNorm(context_dim)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = zero_(nn.Linear(channels, channels))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q = self.q(self.norm(x).flatten(2).transpose(1, 2))  # [B, HW, C]
        k, v = self.kv(self.context_norm(context)).chunk(2, dim=-1)  # [B, L, C] each
        h = F.scaled_dot_product_attention(*(_heads(a, self.heads) for a in (q, k, v)))  # [B, n, HW, d]
        h = self.proj(h.transpose(1, 2).flatten(2))  # [B, HW, C]
        return h.transpose(1, 2).reshape(B, C, H, W)  # [B, C, H, W]


def _fused_attention(qkv: Tensor) -> bool:
    """Whether to hand SDPA unit-stride q/k/v ``[B, 3, n, HW, d]``, which its fused kernels need: on CUDA,
    for every forward pass and for 16x16 tokens and more. Training in bf16 on the CPU at up to 8x8 tokens,
    the fused kernel's backward is 2.5-6x slower than the math kernel a strided view selects (measured on
    2 cores: 15.7 ms against 4.2 ms at 64 tokens, 64 channels, batch 32; 42 ms against 84 ms at 256)."""
    cpu_bf16_train = qkv.device.type == "cpu" and qkv.dtype == torch.bfloat16 and torch.is_grad_enabled()
    return not (cpu_bf16_train and qkv.shape[-2] <= 64)


class AttentionBlock(nn.Module):
    """Multi-head spatial self-attention, plus cross-attention to context when ``context_dim`` is set."""

    def __init__(self, channels: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_(nn.Conv2d(channels, channels, 1))
        self.cross = CrossAttention(channels, context_dim, heads) if context_dim else None

    def forward(self, x: Tensor, emb: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        qkv = qkv.transpose(-1, -2)  # [B, 3, n, HW, d], a strided view
        if _fused_attention(qkv):
            q, k, v = qkv.transpose(0, 1).contiguous().unbind(0)  # [B, n, HW, d] each, unit stride
        else:
            q, k, v = qkv.unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)  # [B, n, HW, d]
        x = x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))  # [B, C, H, W]
        if self.cross is not None and context is not None:
            x = x + self.cross(x, context)  # [B, C, H, W]
        return x


# ---------------------------------------------------------------------------- U-Net


class UNet(nn.Module):
    """ADM U-Net returning ``{"middle", "output", "eps"}`` (see :meth:`forward`).

    ``cond_channels`` extra input channels are concatenated to ``z`` (the "-X" variant);
    ``context_dim`` adds cross-attention to context tokens in every attention block.
    """

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        out_channels: int,
        model_channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (16,),
        num_heads: int = 4,
        num_head_channels: int = -1,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = False,
        cond_channels: int = 0,
        context_dim: int | None = None,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        levels = len(channel_mult)
        _validate(
            image_size,
            channel_mult,
            num_res_blocks,
            attention_resolutions,
            model_channels,
            num_heads,
            num_head_channels,
            cond_channels,
            context_dim,
        )
        self.image_size, self.in_channels, self.out_channels = image_size, in_channels, out_channels
        self.model_channels, self.cond_channels, self.context_dim = model_channels, cond_channels, context_dim
        self.gradient_checkpointing = gradient_checkpointing

        self.emb_dim = emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res(ch_in: int, ch_out: int, **kw) -> ResBlock:
            return ResBlock(ch_in, emb_dim, ch_out, dropout=dropout, use_scale_shift_norm=use_scale_shift_norm, **kw)

        def attn(ch: int) -> AttentionBlock:
            heads = num_heads if num_head_channels == -1 else ch // num_head_channels
            return AttentionBlock(ch, heads, context_dim)

        ch = model_channels * channel_mult[0]
        self.input_blocks = nn.ModuleList([Stage(Conv(in_channels + cond_channels, ch, 3, padding=1))])
        skips, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if image_size // ds in attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(Stage(*layers))
                skips.append(ch)
            if level < levels - 1:
                self.input_blocks.append(Stage(res(ch, ch, down=True) if resblock_updown else Downsample(ch)))
                skips.append(ch)
                ds *= 2

        self.middle_block = Stage(res(ch, ch), attn(ch), res(ch, ch))
        self.middle_channels = ch

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skips.pop(), mult * model_channels)]
                ch = mult * model_channels
                if image_size // ds in attention_resolutions:
                    layers.append(attn(ch))
                if level > 0 and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Stage(*layers))

        self.output_channels = ch
        self.out = output_block(ch, out_channels)

    def _run(self, block: Stage, h: Tensor, emb: Tensor, context: Tensor | None) -> Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, emb, context, use_reentrant=False)
        return block(h, emb, context)

    def forward(
        self,
        z: Tensor,
        t: Tensor,
        *,
        cond: Tensor | None = None,
        context: Tensor | None = None,
        emb: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Predict noise and expose trunk features.

        z: [B, in_channels, H, W]; t: [B] timesteps (long or float) or a scalar;
        cond: [B, cond_channels, H, W], required iff ``cond_channels > 0``;
        context: [B, L, context_dim] or None (cross-attention is then skipped);
        emb: [B, emb_dim] added to the time embedding, or None.
        Returns {"middle": [B, C_mid, h, w], "output": [B, C0, H, W], "eps": [B, out_channels, H, W]}.
        """
        B, _, H, W = z.shape
        if self.cond_channels:
            expected = (B, self.cond_channels, H, W)
            if cond is None or tuple(cond.shape) != expected:
                got = None if cond is None else list(cond.shape)
                raise ValueError(
                    f"cond must have shape {list(expected)} (cond_channels={self.cond_channels}), got {got}"
                )
            z = torch.cat([z, cond.to(z.dtype)], dim=1)  # [B, in + cond, H, W]
        elif cond is not None:
            raise ValueError("cond was given but the model was built with cond_channels=0")
        if context is not None:
            if self.context_dim is None:
                raise ValueError("context was given but the model was built with context_dim=None")
            if context.ndim != 3 or context.shape[0] != B or context.shape[-1] != self.context_dim:
                raise ValueError(f"context must have shape [{B}, L, {self.context_dim}], got {list(context.shape)}")

        t = t.expand(B) if t.ndim == 0 else t
        extra, emb = emb, self.time_embed(timestep_embedding(t, self.model_channels).to(z.dtype))  # [B, 4*C]
        if extra is not None:
            emb = emb + extra.to(emb.dtype)

        h, hs = z, []
        for block in self.input_blocks:
            h = self._run(block, h, emb, context)  # [B, C_l, H_l, W_l]
            hs.append(h)
        h = middle = self._run(self.middle_block, h, emb, context)  # [B, C_mid, h, w]
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, hs.pop()], dim=1), emb, context)  # [B, C_l, H_l, W_l]
        return {"middle": middle, "output": h, "eps": self.out(h)}  # eps: [B, out, H, W]


def _validate(
    image_size,
    channel_mult,
    num_res_blocks,
    attention_resolutions,
    model_channels,
    num_heads,
    num_head_channels,
    cond_channels,
    context_dim,
) -> None:
    """Raise ValueError for configurations the U-Net cannot build."""
    if not channel_mult:
        raise ValueError("channel_mult must be non-empty")
    if num_res_blocks < 1:
        raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
    factor = 2 ** (len(channel_mult) - 1)
    if image_size % factor:
        raise ValueError(f"image_size={image_size} must be divisible by 2**(len(channel_mult)-1)={factor}")
    resolutions = [image_size // 2**i for i in range(len(channel_mult))]
    if bad := sorted(set(attention_resolutions) - set(resolutions)):
        raise ValueError(f"attention_resolutions {bad} are not reached; the U-Net resolutions are {resolutions}")
    if cond_channels < 0:
        raise ValueError(f"cond_channels must be >= 0, got {cond_channels}")
    if context_dim is not None and context_dim <= 0:
        raise ValueError(f"context_dim must be positive or None, got {context_dim}")
    # channel counts that get an attention block: attended levels, plus the middle block
    attn_channels = {model_channels * m for m, r in zip(channel_mult, resolutions) if r in attention_resolutions}
    for ch in sorted(attn_channels | {model_channels * channel_mult[-1]}):
        if num_head_channels == -1:
            if num_heads < 1 or ch % num_heads:
                raise ValueError(f"num_heads={num_heads} must divide the attention channels ({ch})")
        elif num_head_channels < 1 or ch % num_head_channels:
            raise ValueError(f"num_head_channels={num_head_channels} must divide the attention channels ({ch})")
