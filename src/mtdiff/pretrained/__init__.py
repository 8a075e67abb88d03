"""Frozen pretrained networks mtdiff uses but never trains: image feature extractors (for
representation modalities and for FID-type metrics), text encoders (for captions) and the external
MNIST classifier (for the "MNIST-CNN (ccexam)" label agreement score)."""

from .errors import MissingExtractorError
from .images import IMAGE_FEATURES, ImageFeatures, load_image_features
from .mnist import MissingWeightsError, MNISTClassifier, load_mnist_classifier
from .text import TEXT_ENCODERS, TextEncoder, load_text_encoder

__all__ = [
    "IMAGE_FEATURES",
    "ImageFeatures",
    "load_image_features",
    "MissingExtractorError",
    "TEXT_ENCODERS",
    "TextEncoder",
    "load_text_encoder",
    "MNISTClassifier",
    "MissingWeightsError",
    "load_mnist_classifier",
]
