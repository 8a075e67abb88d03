"""The standard FID network: TensorFlow's Inception-v3 of 2015-12-05, from a weights file the user supplies.

FID (Heusel et al. 2017), IS (Salimans et al. 2016), KID (Binkowski et al. 2018) and sFID (Nash et
al. 2021) are only comparable with published numbers when computed on this network. Its weights
cannot be downloaded here, so :func:`load_inception` reads one of two files the user copies in:

- ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid) = ``weights-inception-2015-12-05-6726825d.pth``
  (torch-fidelity, what torchmetrics' FID downloads): a state dict of the TF graph ported to PyTorch
  (the ``6726825d`` hash names the same file). :class:`FIDInceptionV3` below rebuilds that network
  without torchvision / torch-fidelity: the module names follow torch-fidelity's
  ``FeatureExtractorInceptionV3`` so the file loads with ``strict=True``; the TF quirks are kept
  (average pools that exclude padding, max pool in the last block, TF1 bilinear resize to 299 px).
- ``inception-2015-12-05.pt``: the TorchScript export used by StyleGAN2-ADA, clean-fid and EDM.

This code cannot be checked against the real weights offline (none are available here): the tests
only load a state dict of the right layout with random values. Verify once with real weights
against torch-fidelity or clean-fid before reporting numbers.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import MissingExtractorError

__all__ = ["INCEPTION_HELP", "INCEPTION_WEIGHTS_ENV", "FIDInceptionV3", "load_inception", "resize_bilinear_tf1"]

#: Environment variable naming the weights file when none is passed.
INCEPTION_WEIGHTS_ENV = "MTDIFF_INCEPTION_WEIGHTS"
INCEPTION_HELP = (
    "the 'inception' feature extractor (the standard FID network) needs a weights file that mtdiff cannot "
    "download: either pt_inception-2015-12-05-6726825d.pth "
    "(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth; "
    "torch-fidelity and torchmetrics download the same file as weights-inception-2015-12-05-6726825d.pth) "
    "or the TorchScript file inception-2015-12-05.pt "
    "(https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt). "
    f"Download one on a machine with internet access, copy it here and pass its path (weights=PATH, "
    f"mtdiff evaluate --weights PATH) or set {INCEPTION_WEIGHTS_ENV}=PATH"
)


def resize_bilinear_tf1(x: Tensor, size: int) -> Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False, no half-pixel centres): source = target * in / out."""

    def axis(n_in: int):
        pos = torch.arange(size, dtype=x.dtype, device=x.device) * (n_in / size)
        lo = pos.long()
        return lo, (lo + 1).clamp_max(n_in - 1), pos - lo

    (y0, y1, dy), (x0, x1, dx) = axis(x.shape[-2]), axis(x.shape[-1])
    rows = x[..., y0, :] + (x[..., y1, :] - x[..., y0, :]) * dy[:, None]
    return rows[..., x0] + (rows[..., x1] - rows[..., x0]) * dx


class _Conv(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)  # TF's average pool skips the padding


class _A(nn.Module):  # Mixed_5b..5d, 35 x 35
    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _Conv(cin, 48, 1), _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 64, 1), _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg3(x)),
            ],
            1,
        )


class _B(nn.Module):  # Mixed_6a, 35 -> 17
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 64, 1), _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, 3, 2),
            ],
            1,
        )


class _C(nn.Module):  # Mixed_6b..6e, 17 x 17
    def __init__(self, cin: int, c7: int):
        super().__init__()
        h, v = {"kernel": (1, 7), "padding": (0, 3)}, {"kernel": (7, 1), "padding": (3, 0)}
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = (
            _Conv(cin, c7, 1),
            _Conv(c7, c7, **h),
            _Conv(c7, 192, **v),
        )
        self.branch7x7dbl_1, self.branch7x7dbl_2 = _Conv(cin, c7, 1), _Conv(c7, c7, **v)
        self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5 = (
            _Conv(c7, c7, **h),
            _Conv(c7, c7, **v),
            _Conv(c7, 192, **h),
        )
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class _D(nn.Module):  # Mixed_7a, 17 -> 8
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _Conv(cin, 192, 1), _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1, self.branch7x7x3_2 = _Conv(cin, 192, 1), _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3, self.branch7x7x3_4 = _Conv(192, 192, (7, 1), padding=(3, 0)), _Conv(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, 2)], 1)


class _E(nn.Module):  # Mixed_7b (average pool), Mixed_7c (max pool: a quirk of the TF graph), 8 x 8
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        h, v = {"kernel": (1, 3), "padding": (0, 1)}, {"kernel": (3, 1), "padding": (1, 0)}
        self.max_pool = max_pool
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1, self.branch3x3_2a, self.branch3x3_2b = (
            _Conv(cin, 384, 1),
            _Conv(384, 384, **h),
            _Conv(384, 384, **v),
        )
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 448, 1), _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a, self.branch3x3dbl_3b = _Conv(384, 384, **h), _Conv(384, 384, **v)
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg3(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(a),
                self.branch3x3_2b(a),
                self.branch3x3dbl_3a(d),
                self.branch3x3dbl_3b(d),
                self.branch_pool(pool),
            ],
            1,
        )


class FIDInceptionV3(nn.Module):
    """Inception-v3 as in the TF FID graph; ``extract`` takes float images in [0, 255] [B, 3, H, W]."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3, self.Conv2d_2a_3x3 = _Conv(3, 32, 3, stride=2), _Conv(32, 32, 3)
        self.Conv2d_2b_3x3, self.MaxPool_1 = _Conv(32, 64, 3, padding=1), nn.MaxPool2d(3, 2)
        self.Conv2d_3b_1x1, self.Conv2d_4a_3x3, self.MaxPool_2 = _Conv(64, 80, 1), _Conv(80, 192, 3), nn.MaxPool2d(3, 2)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _A(192, 32), _A(256, 64), _A(288, 64)
        self.Mixed_6a = _B(288)
        self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = (
            _C(768, 128),
            _C(768, 160),
            _C(768, 160),
            _C(768, 192),
        )
        self.Mixed_7a, self.Mixed_7b, self.Mixed_7c = _D(768), _E(1280, False), _E(2048, True)
        self.AvgPool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, 1008)

    def extract(self, x: Tensor) -> dict[str, Tensor]:
        """pool3 features [B, 2048], sFID's ``mixed_6/conv`` first 7 channels [B, 7 * 17 * 17], logits [B, 1008]
        without the output bias (torch-fidelity's ``logits_unbiased``, used for IS)."""
        x = (resize_bilinear_tf1(x, 299) - 128) / 128  # [B, 3, 299, 299]
        for name in (
            "Conv2d_1a_3x3",
            "Conv2d_2a_3x3",
            "Conv2d_2b_3x3",
            "MaxPool_1",
            "Conv2d_3b_1x1",
            "Conv2d_4a_3x3",
            "MaxPool_2",
            "Mixed_5b",
            "Mixed_5c",
            "Mixed_5d",
            "Mixed_6a",
            "Mixed_6b",
            "Mixed_6c",
        ):
            x = getattr(self, name)(x)  # ... [B, 768, 17, 17]
        spatial = self.Mixed_6d.branch1x1(x)[:, :7].flatten(1)  # TF "mixed_6/conv", 7 channels
        for block in (self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)  # [B, 2048, 8, 8]
        pool = self.AvgPool(x).flatten(1)  # [B, 2048]
        return {"features": pool, "spatial": spatial, "logits": pool @ self.fc.weight.T}


class _TorchScriptInception(nn.Module):
    """StyleGAN2-ADA's TorchScript export: ``net(x, return_features=True)`` gives pool3; without it, class
    probabilities (``no_output_bias=True`` as StyleGAN's IS), returned here as log-probabilities."""

    def __init__(self, net: torch.jit.ScriptModule):
        super().__init__()
        self.net = net

    def extract(self, x: Tensor) -> dict[str, Tensor]:
        probs = self.net(x, no_output_bias=True)
        return {"features": self.net(x, return_features=True), "logits": probs.clamp_min(1e-30).log()}


def _weights_path(weights: str | os.PathLike | None) -> Path:
    given = weights if weights is not None else os.environ.get(INCEPTION_WEIGHTS_ENV)
    if not given:
        raise MissingExtractorError(INCEPTION_HELP)
    path = Path(given).expanduser()
    if not path.is_file():
        source = "weights=" if weights is not None else f"${INCEPTION_WEIGHTS_ENV}="
        raise MissingExtractorError(f"{source}{given}: no such file; {INCEPTION_HELP}")
    return path


def load_inception(weights: str | os.PathLike | None = None) -> nn.Module:
    """The FID Inception network from ``weights`` (else ``$MTDIFF_INCEPTION_WEIGHTS``), frozen, on the CPU.

    Raises ``MissingExtractorError`` naming the file to get when there is none. A state dict that does not
    fit :class:`FIDInceptionV3` raises ``RuntimeError`` with the mismatching keys.
    """
    path = _weights_path(weights)
    try:
        net: nn.Module = _TorchScriptInception(torch.jit.load(str(path), map_location="cpu"))
    except RuntimeError:  # not TorchScript: a state dict
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = FIDInceptionV3()
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise RuntimeError(
                f"{path} is not pt_inception-2015-12-05-6726825d.pth (the FID Inception weights): {e}"
            ) from None
    return net.requires_grad_(False).eval()
