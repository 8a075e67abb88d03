"""Frozen pretrained networks mtdiff uses but never trains: image feature extractors (for
representation modalities and for FID-type metrics) and text encoders (for captions)."""
from .images import IMAGE_FEATURES, ImageFeatures, load_image_features
from .text import TEXT_ENCODERS, TextEncoder, load_text_encoder

__all__ = ["IMAGE_FEATURES", "ImageFeatures", "load_image_features", "TEXT_ENCODERS", "TextEncoder",
           "load_text_encoder"]
