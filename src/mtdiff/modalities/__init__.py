"""Modalities: typed objects holding an encoder E_i, a head D_i and a likelihood each."""
from .base import Modality
from .heads import HEADS, ClassifierHead, MLPHead, OutputHead
from .kinds import (
    MODALITY_KINDS, ImageModality, LabelModality, MaskedImageModality, SegmentationModality, TextModality,
    VectorModality,
)

__all__ = [
    "Modality", "MODALITY_KINDS", "ImageModality", "MaskedImageModality", "LabelModality",
    "SegmentationModality", "VectorModality", "TextModality", "HEADS", "OutputHead", "MLPHead", "ClassifierHead",
]
