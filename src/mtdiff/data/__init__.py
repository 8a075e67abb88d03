"""Data: in-memory image sets, the paper's masks, an exactly resumable batch stream, and
:func:`load_source`, which loads any data source by name.

Layers, each importing only those below it: :mod:`.imageset` (``ImageSet``, ``DataError``);
:mod:`.sources` (the built-in MNIST and Fashion-MNIST), :mod:`.folder` and :mod:`.paired` (image
folders), :mod:`.cache` (decoded folders memory-mapped from disk); this package (the dispatcher over all of them).
"""

from __future__ import annotations

import functools
from pathlib import Path

from .cache import cached, fingerprint
from .folder import load_image_folder
from .imageset import DataError, ImageSet, check_split
from .loader import BatchStream
from .masking import apply_mask, half_mask, make_mask, random_patch_mask
from .paired import load_paired_folder
from .sources import load_fashion_mnist, load_mnist

__all__ = [
    "BatchStream",
    "DataError",
    "ImageSet",
    "SOURCE_NAMES",
    "load_mnist",
    "load_fashion_mnist",
    "load_source",
    "make_mask",
    "random_patch_mask",
    "half_mask",
    "apply_mask",
]

SOURCE_NAMES: tuple[str, ...] = ("mnist", "fashion-mnist", "folder", "paired")

_ALIASES = {
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "folder": "folder",
    "image-folder": "folder",
    "image_folder": "folder",
    "paired": "paired",
}


def load_source(
    name: str, split: str, *, cache: str | Path | None = None, prepared: bool = False, workers: int = 1, **kw
) -> ImageSet:
    """Load a data source by name: "mnist", "fashion-mnist", "folder" or "paired".

    "fashion-mnist" accepts ``root=``. "folder" needs ``root=`` and ``image_size=``
    (plus optional ``channels=``, ``on_bad=``); if ``root/<split>`` is a directory it is
    used (e.g. ``root/train``, ``root/test``), otherwise ``root`` itself. "paired" takes the
    folder options plus ``direction=`` and reads ``root/train``, or ``root/test`` (``root/val``
    when there is no test/, as in pix2pix's Cityscapes) for split "test". With ``cache`` (a directory) the
    two folder sources are decoded once and memory-mapped from there afterwards (:mod:`.cache`);
    ``prepared``: only mapped, a DataError if not decoded yet; ``workers``: decoding threads (folder).
    """
    key = _ALIASES.get(str(name).strip().lower())
    if key is None:
        raise DataError(f"unknown data source {name!r}; valid names: {', '.join(map(repr, SOURCE_NAMES))}")
    check_split(split)
    if key == "mnist":
        if kw:
            raise DataError(f"source 'mnist' takes no options, got {sorted(kw)}")
        return load_mnist(split)
    if key == "fashion-mnist":
        unknown = set(kw) - {"root"}
        if unknown:
            raise DataError(f"source 'fashion-mnist' takes only root=, got {sorted(unknown)}")
        return load_fashion_mnist(split, **kw)
    root = kw.pop("root", None)
    if root is None:
        what = "one sub-folder per class" if key == "folder" else "train/ and test/ (or val/) of A|B images"
        raise DataError(f"source {key!r} needs root=<directory with {what}>")
    if "image_size" not in kw:
        raise DataError(f"source {key!r} needs image_size=<int>")
    root = Path(root).expanduser()
    if key == "paired":
        if split == "test" and not (root / "test").is_dir() and (root / "val").is_dir():
            split = "val"
        folder, load = root / split, functools.partial(load_paired_folder, root, split, **kw)
    else:
        folder = root / split if (root / split).is_dir() else root
        load = functools.partial(load_image_folder, folder, workers=workers, **kw)
    if cache is None or not folder.is_dir():  # a missing folder fails in the loader, with its message
        return load()
    key = fingerprint(folder, {"source": key, "folder": folder.resolve(), **kw})
    return cached(load, Path(cache), key, prepared=f"the image folder {folder}" if prepared else None)
