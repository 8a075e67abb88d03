"""The in-memory image dataset every data source returns, and the data error.

An :class:`ImageSet` holds ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]`` (or
``None``), the ``class_names`` and a ``name``. Images stay uint8 to save memory;
:meth:`ImageSet.to_float` turns a batch into float32 in ``[-1, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..errors import MtdiffError

__all__ = ["DataError", "ImageSet", "SPLITS", "IMAGE_EXTENSIONS", "check_split"]

SPLITS: tuple[str, ...] = ("train", "test")
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})


class DataError(MtdiffError, ValueError):
    """A data source is missing, malformed or misconfigured."""


@dataclass
class ImageSet:
    """A whole dataset in memory.

    images: uint8 tensor [N, C, H, W].
    labels: int64 tensor [N], or None for unlabelled data.
    class_names: class_names[k] is the name of label k.
    name: short description of the source (e.g. "mnist/train").
    extras: more per-sample tensors [N, ...] by batch key (e.g. "source", the other half of a
        paired image); uint8 ones are images and reach batches as float [-1, 1] like ``images``.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: list[str] = field(default_factory=list)
    name: str = ""
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"ImageSet.images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels is not None and self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"ImageSet.labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )
        for key, x in self.extras.items():
            if key in ("image", "label") or x.shape[:1] != self.images.shape[:1]:
                raise DataError(
                    f"ImageSet.extras[{key!r}] must be a tensor [{self.images.shape[0]}, ...] under a key other "
                    f"than 'image' and 'label', got {tuple(x.shape)}"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def nbytes(self) -> int:
        tensors = [self.images, *([self.labels] if self.labels is not None else []), *self.extras.values()]
        return sum(x.numel() * x.element_size() for x in tensors)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The per-sample tensors by batch key: "image", "label" when labelled, and every extra."""
        return {"image": self.images, **({"label": self.labels} if self.labels is not None else {}), **self.extras}

    def to(self, device: torch.device | str) -> ImageSet:
        """The same set with its tensors on ``device`` (batches are then gathered there, with no copy per step)."""
        return replace(
            self,
            images=self.images.to(device),
            labels=None if self.labels is None else self.labels.to(device),
            extras={k: v.to(device) for k, v in self.extras.items()},
        )

    def to_float(self, idx=None) -> torch.Tensor:
        """float32 images in [-1, 1] (x / 127.5 - 1) for the index tensor ``idx``.

        ``idx`` is anything that indexes dim 0 (LongTensor, list, slice); ``None``
        converts the whole set.
        """
        x = self.images if idx is None else self.images[idx]
        return x.to(torch.float32) / 127.5 - 1.0

    def batch(self, idx, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The batch for ``idx``: "image" (float [-1, 1]), "label" when labelled, and every extra."""
        out = {"image": self.to_float(idx)}
        if self.labels is not None:
            out["label"] = self.labels[idx]
        for key, x in self.extras.items():
            x = x[idx]
            out[key] = x.to(torch.float32) / 127.5 - 1.0 if x.dtype == torch.uint8 else x
        return {k: v.to(device, non_blocking=True) for k, v in out.items()}


def check_split(split: str) -> str:
    """``split`` if it is one of :data:`SPLITS`, else DataError."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid splits: {', '.join(map(repr, SPLITS))}")
    return split
