"""Modalities: typed objects holding an encoder E_i, a head D_i and a likelihood each; ``MODALITY_KINDS``
is the registry of their kinds (every subclass that sets ``kind``). A kind is one module: ``image``,
``masked_image``, ``label`` and ``segmentation`` (sharing ``discrete``), ``vector``, ``text``; every module
of this package is imported with it, so a kind module added here is registered without another file."""

import importlib
import pkgutil

from .base import MODALITY_KINDS, VALUE_TYPES, Modality
from .heads import HEADS, ClassifierHead, MLPHead, OutputHead

# isort: off
# the registry's order (config messages list it): the order of these imports
from .image import ImageModality
from .masked_image import MaskedImageModality
from .label import LabelModality
from .segmentation import SegmentationModality
from .vector import VectorModality
from .text import TextModality

# isort: on

for _module in pkgutil.iter_modules(__path__):  # the other kinds' modules, in the order of their names
    importlib.import_module(f"{__name__}.{_module.name}")
del _module

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
