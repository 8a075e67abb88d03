"""LPIPS (Zhang et al. 2018) from a backbone weights file the user supplies.

LPIPS(x, y) = sum_l mean_hw w_l . (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|)^2 over five ReLU taps f_l of
an ImageNet AlexNet or VGG16. The learned weights w_l (LPIPS v0.1) ship with torchmetrics
(``torchmetrics/functional/image/lpips_models/{alex,vgg}.pth``); the backbones do not: torchmetrics
builds them with torchvision and downloads their weights, neither of which works here. This module
rebuilds the backbones in plain torch (torchvision's layer layout, so torchvision's weights files load
as they are) and reads a local copy of the file:

- ``net="alex"``: ``alexnet-owt-7be5be79.pth`` (https://download.pytorch.org/models/alexnet-owt-7be5be79.pth)
- ``net="vgg"``: ``vgg16-397923af.pth`` (https://download.pytorch.org/models/vgg16-397923af.pth)

The tests check this against torchmetrics' own LPIPS with the same (random) backbone weights; with
the real ones it is the standard LPIPS, which cannot be checked offline.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import MissingExtractorError

__all__ = ["LPIPS", "LPIPS_FILES", "LPIPS_WEIGHTS_ENV", "backbone", "load_lpips"]

#: Environment variable naming the backbone weights file when none is passed.
LPIPS_WEIGHTS_ENV = "MTDIFF_LPIPS_WEIGHTS"
LPIPS_FILES = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
}
# torchvision ``features`` indices that end each of the five LPIPS taps
_TAPS = {"alex": (2, 5, 8, 10, 12), "vgg": (4, 9, 16, 23, 30)}


def backbone(net: str) -> nn.Sequential:
    """torchvision's ``alexnet().features`` / ``vgg16().features`` layout, untrained."""
    if net == "alex":
        spec = [(64, 11, 4, 2), "M", (192, 5, 1, 2), "M", (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1), "M"]
    elif net == "vgg":
        spec = [
            (c, 3, 1, 1) if c != "M" else "M"
            for c in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
        ]
    else:
        raise ValueError(f"LPIPS backbone must be 'alex' or 'vgg', got {net!r}")
    layers, cin = [], 3
    for s in spec:
        if s == "M":
            layers.append(nn.MaxPool2d(3, 2) if net == "alex" else nn.MaxPool2d(2, 2))
        else:
            cout, k, stride, pad = s
            layers += [nn.Conv2d(cin, cout, k, stride, pad), nn.ReLU()]
            cin = cout
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """LPIPS distance [B] between images in [-1, 1] [B, C, H, W] (greyscale repeated to RGB)."""

    def __init__(self, features: nn.Sequential, lins: list[Tensor], net: str):
        super().__init__()
        self.net, self.features = net, features
        self.lins = nn.ParameterList([nn.Parameter(w, requires_grad=False) for w in lins])  # [1, C_l, 1, 1]
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)

    def _taps(self, x: Tensor) -> list[Tensor]:
        x, out, start = (x.expand(-1, 3, -1, -1) - self.shift) / self.scale, [], 0
        for end in _TAPS[self.net]:
            x = self.features[start:end](x)
            out.append(x / (x.pow(2).sum(1, keepdim=True) + 1e-8).sqrt())  # unit length over channels
            start = end
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                f"LPIPS needs two image batches [B, 1 or 3, H, W] of one shape, got "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )
        d = 0
        for w, fx, fy in zip(self.lins, self._taps(x), self._taps(y)):
            d = d + ((fx - fy) ** 2 * w).sum(1).mean((1, 2))
        return d


def _lin_weights(net: str) -> list[Tensor]:
    import torchmetrics.functional.image.lpips as tm_lpips

    path = Path(tm_lpips.__file__).parent / "lpips_models" / f"{net}.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    return [state[f"lin{i}.model.1.weight"].float() for i in range(5)]


def load_lpips(net: str = "alex", weights: str | os.PathLike | None = None) -> LPIPS:
    """LPIPS with ``net``'s ImageNet backbone from ``weights`` (else ``$MTDIFF_LPIPS_WEIGHTS``): a torchvision
    state dict (``features.*`` keys, as in the files of ``LPIPS_FILES``). Raises ``MissingExtractorError``
    without it."""
    features = backbone(net)
    given = weights if weights is not None else os.environ.get(LPIPS_WEIGHTS_ENV)
    if not given or not Path(given).expanduser().is_file():
        what = f"{given}: no such file; " if given else ""
        raise MissingExtractorError(
            f"{what}LPIPS ({net}) needs torchvision's ImageNet weights file {Path(LPIPS_FILES[net]).name} "
            f"({LPIPS_FILES[net]}), which mtdiff cannot download: copy it here and pass its path "
            f"(load_lpips(net, weights=PATH)) or set {LPIPS_WEIGHTS_ENV}=PATH"
        )
    state = torch.load(Path(given).expanduser(), map_location="cpu", weights_only=True)
    state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    try:
        features.load_state_dict(state)
    except RuntimeError as e:
        raise RuntimeError(
            f"{given} is not torchvision's {net} weights file ({Path(LPIPS_FILES[net]).name}): {e}"
        ) from None
    return LPIPS(features, _lin_weights(net), net)
