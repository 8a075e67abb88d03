"""Modalities: typed objects holding an encoder E_i, a head D_i and a likelihood each; ``MODALITY_KINDS``
is the registry of their kinds (every subclass that sets ``kind``)."""

from .base import MODALITY_KINDS, VALUE_TYPES, Modality
from .heads import HEADS, ClassifierHead, MLPHead, OutputHead
from .kinds import (
    ImageModality,
    LabelModality,
    MaskedImageModality,
    SegmentationModality,
    TextModality,
    VectorModality,
)

__all__ = [
    "Modality",
    "MODALITY_KINDS",
    "VALUE_TYPES",
    "ImageModality",
    "MaskedImageModality",
    "LabelModality",
    "SegmentationModality",
    "VectorModality",
    "TextModality",
    "HEADS",
    "OutputHead",
    "MLPHead",
    "ClassifierHead",
]
