"""Decoder heads D_i (Section 2.2.4): each reads one backbone feature and maps it to a modality's space."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..models.unet import group_norm, output_block

__all__ = ["OutputHead", "MLPHead", "ClassifierHead", "UpsampledMiddleHead", "HEADS"]


class SpatialMean(nn.Module):
    """Global average pooling [B, C, H, W] -> [B, C, 1, 1] as a mean, whose CUDA backward is deterministic
    (``AdaptiveAvgPool2d``'s is not, and stops a run under ``train.deterministic``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean((2, 3), keepdim=True)


class OutputHead(nn.Module):
    """A replica of the U-Net's output block (GroupNorm, SiLU, Conv3x3) on the ``output`` features."""

    feature = "output"

    def __init__(self, in_channels: int, out_channels: int, **_):
        super().__init__()
        self.net = output_block(in_channels, out_channels)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.net(features[self.feature])  # [B, out, H, W]


class MLPHead(nn.Module):
    """MT-Diffusion-M: pooled ``middle`` features -> MLP (one linear layer when hidden = 0)."""

    feature = "middle"

    def __init__(self, in_channels: int, out_features: int, *, hidden: int = 0, **_):
        super().__init__()
        layers: list[nn.Module] = [group_norm(in_channels), nn.SiLU(), SpatialMean(), nn.Flatten()]
        if hidden:
            layers += [nn.Linear(in_channels, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden or in_channels, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.net(features[self.feature])  # [B, out]


class ClassifierHead(nn.Module):
    """MT-Diffusion-E: a small convolutional classifier on the U-Net's ``output`` features.

    Stride-2 residual-free conv stages down to 4x4, then global pooling and a linear layer
    (a compact stand-in for guided-diffusion's classifier; same place in the network).
    """

    feature = "output"

    def __init__(self, in_channels: int, out_features: int, *, image_size: int, hidden: int = 0, **_):
        super().__init__()
        ch = hidden or in_channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 3, padding=1)]
        size = image_size
        while size > 4:
            layers += [group_norm(ch), nn.SiLU(), nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1)]
            ch, size = 2 * ch, (size + 1) // 2
        layers += [group_norm(ch), nn.SiLU(), SpatialMean(), nn.Flatten(), nn.Linear(ch, out_features)]
        self.net = nn.Sequential(*layers)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.net(features[self.feature])  # [B, out]


class UpsampledMiddleHead(nn.Module):
    """A dense head on the ``middle`` features: Conv3x3 there (GroupNorm, SiLU first), nearest upsampling to
    the output size, then an output block. Unlike the output-block replica, every output pixel sees the
    middle block's whole-image context (a per-pixel class that depends on the whole digit)."""

    feature = "middle"

    def __init__(self, in_channels: int, out_channels: int, *, image_size: int, hidden: int = 0, **_):
        super().__init__()
        ch = hidden or in_channels
        self.size = image_size
        self.inner = nn.Sequential(group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, ch, 3, padding=1))
        self.out = output_block(ch, out_channels)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        h = F.interpolate(self.inner(features[self.feature]), size=(self.size, self.size), mode="nearest")
        return self.out(h)  # [B, out, H, W]


HEADS = {"output": OutputHead, "middle": MLPHead, "classifier": ClassifierHead, "middle-up": UpsampledMiddleHead}
