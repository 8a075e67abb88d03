"""What a task asks of a modality, as a test on its kind (``Run.modality``), and the modalities a run asks for
classes or translates from: no task names a kind."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .errors import InputError
from .modalities import Modality

__all__ = [
    "gives_class",
    "takes_text",
    "gives_vector",
    "views_image",
    "translation_source",
    "class_conditions",
    "num_classes",
    "kinds_of",
]


def gives_class(kind: type[Modality]) -> bool:
    """Its value is a class, estimated by its head: the labels of samples, classify, head guidance."""
    return kind.value == "class"


def takes_text(kind: type[Modality]) -> bool:
    """Its value is a caption: prompts."""
    return kind.value == "text"


def gives_vector(kind: type[Modality]) -> bool:
    """Its value is a representation vector: represent."""
    return kind.value == "vector"


def views_image(kind: type[Modality]) -> bool:
    """Its data are a view of the image (a masked image): restore."""
    return kind.image_view


def translation_source(model, modality: str | None = None, where: Any = "this run") -> str:
    """The modality a run translates images from (Appendix E.1): ``modality``, checked, else the first whose kind
    is a translation source (class maps, source images); an :class:`InputError` when there is none."""
    sources = [n for n, m in model.modalities.items() if m.translation_source]
    if not sources:
        raise InputError(f"translate needs a run with a segmentation or image modality; {where} has none")
    if modality is not None and modality not in sources:
        raise InputError(f"modality must be one of {sources}, got {modality!r}")
    return modality or sources[0]


def _class_modality(model):
    """(name, modality) through which classes can be asked for (``Modality.askable_classes``): the first whose
    value is the class itself (a label), else the first other one (a text modality with class names); None when
    no modality can be asked for classes."""
    mods = [(n, m) for n, m in model.modalities.items() if m.askable_classes()]
    return min(mods, key=lambda nm: not gives_class(type(nm[1])), default=None)


def class_conditions(model, classes: Tensor) -> tuple[dict[str, Tensor], list[str]] | None:
    """Known data asking for ``classes`` [N] (``Modality.ask_classes``: a label modality's indices, a text
    modality's captions of the class names), with a short caption per sample to print. None when no modality
    can be asked for classes."""
    found = _class_modality(model)
    if found is None:
        return None
    name, mod = found
    data, captions = mod.ask_classes(classes)
    return {name: data}, captions


def num_classes(model) -> int | None:
    """How many classes :func:`class_conditions` can ask for (None without a label or captioned text modality)."""
    found = _class_modality(model)
    return None if found is None else found[1].askable_classes()


def kinds_of(model) -> str:
    """The kinds of a model's modalities, for messages."""
    kinds = sorted(m.kind for m in model.modalities.values())
    return "modalities " + ", ".join(kinds) if kinds else "no modalities (a single-task DDPM)"
