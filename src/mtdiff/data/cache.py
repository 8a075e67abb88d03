"""Decoded image folders kept on disk as memory-mapped arrays.

Decoding a large image folder (ImageNet-64: 1.28M JPEGs, about 16 GB decoded) takes long and, done by
every process of a torchrun job, would hold one copy per process in host memory. :func:`cached` decodes
once and writes the :class:`ImageSet` as ``.npy`` files under a directory named by a fingerprint of the
folder (every image file's relative path, size and modification time) and of the decoding options; every
later load, and every other process, maps those files read-only-shared (``mmap_mode="c"``: the operating
system keeps one copy in its page cache for all processes, and a write would stay private to the writer).
A changed, added or removed file changes the fingerprint, so a stale entry is never read.

:func:`cached_tensors` keeps other per-sample arrays the same way (the VAE latents of a training set,
:mod:`mtdiff.train.latents`), keyed by :func:`tensor_fingerprint` of what they are computed from; their entries
also record each array's SHA-256, so a damaged file is found and the entry made again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from .imageset import IMAGE_EXTENSIONS, DataError, ImageSet

__all__ = ["cached", "cached_tensors", "cache_dir", "fingerprint", "tensor_fingerprint"]

FORMAT = 1  # bumped when the layout of an entry changes
PREPARE = "decode it first, in one process: mtdiff prepare-data --config CONFIG [--set ...] (the training run's)"
_META = "meta.json"


def cache_dir(setting: bool | str) -> Path | None:
    """The directory of the config's ``data.cache``: false -> None; true -> ``$MTDIFF_CACHE``, else
    ``$XDG_CACHE_HOME/mtdiff``, else ``~/.cache/mtdiff``; a string is the directory itself."""
    if setting is False:
        return None
    if isinstance(setting, str):
        return Path(setting).expanduser()
    if os.environ.get("MTDIFF_CACHE"):
        return Path(os.environ["MTDIFF_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mtdiff"


def fingerprint(root: Path, options: dict) -> str:
    """A digest of ``options`` and of every image file under ``root``: relative path, size, mtime (ns)."""
    h = hashlib.sha256(json.dumps({"format": FORMAT, **options}, sort_keys=True, default=str).encode())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                path = Path(dirpath) / name
                st = path.stat()
                h.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def tensor_fingerprint(tensors: Mapping[str, torch.Tensor], options: dict) -> str:
    """A digest of ``options`` and of every tensor's name, dtype, shape and bytes (on the host)."""
    h = hashlib.sha256(json.dumps({"format": FORMAT, **options}, sort_keys=True, default=str).encode())
    for name in sorted(tensors):
        x = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{x.dtype}\0{tuple(x.shape)}\n".encode())
        h.update(memoryview(x.view(torch.uint8).numpy()) if x.numel() else b"")
    return h.hexdigest()[:24]


def cached(load: Callable[[], ImageSet], directory: Path, key: str, *, prepared: str | None = None) -> ImageSet:
    """``load()``'s ImageSet, from ``directory/key`` when it holds one, else decoded and written there first.

    The warnings ``load`` gave (skipped files) are kept with the entry and given again on every load. A cache
    that cannot be written (read-only, full disk) costs speed, not the run: a warning, and the decoded set.
    ``prepared`` (what the folder is): the entry must exist and be intact; a DataError says how to make it
    otherwise (processes of a torchrun job only map the cache: one of them decoding would keep the others
    waiting past any timeout).
    """
    entry = directory / key
    if prepared is not None and not (entry / _META).is_file():
        raise DataError(f"{prepared} is not in the data cache {directory} yet (no {entry.name}/{_META}); {PREPARE}")
    if (entry / _META).is_file():
        try:
            return _read(entry)
        except (OSError, ValueError, KeyError) as e:  # a damaged entry: decode again and replace it
            if prepared is not None:
                raise DataError(f"the data cache entry {entry} of {prepared} is damaged ({e}); {PREPARE}") from None
            warnings.warn(f"damaged cache entry {entry} ({e}); decoding the images again", stacklevel=2)
            shutil.rmtree(entry, ignore_errors=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load()
    notes = [str(w.message) for w in caught]
    try:
        _write(data, entry, notes)
    except OSError as e:
        for note in notes:
            warnings.warn(note, stacklevel=3)
        warnings.warn(
            f"cannot keep the decoded images in {entry} ({e.strerror or e}); every load decodes them again "
            "(set data.cache to a writable directory, or false)",
            stacklevel=3,
        )
        return data
    return _read(entry)


def cached_tensors(
    make: Callable[[], dict[str, torch.Tensor]], directory: Path | None, key: str, *, what: str
) -> dict[str, torch.Tensor]:
    """``make()``'s tensors, memory-mapped from ``directory/key`` when an intact entry is there, else made and
    written there first (``directory`` None: made, not kept). A damaged entry (unreadable, truncated, another
    checksum) is made again with a warning; one that cannot be written costs a warning. ``what`` names them."""
    entry = directory / key if directory is not None else None
    if entry is not None and (entry / _META).is_file():
        try:
            return _read_tensors(entry)
        except (OSError, ValueError, KeyError) as e:
            warnings.warn(f"damaged cache entry {entry} of {what} ({e}); making it again", stacklevel=2)
            shutil.rmtree(entry, ignore_errors=True)
    tensors = make()
    if entry is None:
        return tensors
    try:
        _write_arrays(tensors, entry, {"kind": "tensors", "what": what, "sha256": _digests(tensors)})
    except OSError as e:
        warnings.warn(
            f"cannot keep {what} in {entry} ({e.strerror or e}); every run makes them again "
            "(set data.cache to a writable directory)",
            stacklevel=2,
        )
        return tensors
    return _read_tensors(entry)


def _digests(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    return {name: hashlib.sha256(memoryview(np.ascontiguousarray(x))).hexdigest() for name, x in tensors.items()}


def _read_tensors(entry: Path) -> dict[str, torch.Tensor]:
    """The tensors of an entry of :func:`cached_tensors`, each checked against its recorded SHA-256."""
    meta = json.loads((entry / _META).read_text())
    tensors = {name: torch.from_numpy(np.load(entry / f"{name}.npy", mmap_mode="c")) for name in meta["sha256"]}
    bad = [name for name, digest in _digests(tensors).items() if digest != meta["sha256"][name]]
    if bad:
        raise ValueError(f"{', '.join(f'{b}.npy' for b in bad)} does not match its checksum")
    return tensors


def _write(data: ImageSet, entry: Path, notes: list[str]) -> None:
    """The set's tensors as .npy files and its metadata (:func:`_write_arrays`)."""
    arrays = {"images": data.images, **({"labels": data.labels} if data.labels is not None else {})}
    arrays.update({f"extra.{k}": v for k, v in data.extras.items()})
    _write_arrays(arrays, entry, {"name": data.name, "class_names": data.class_names, "warnings": notes})


def _write_arrays(arrays: Mapping[str, torch.Tensor], entry: Path, meta: dict) -> None:
    """``arrays`` as .npy files and ``meta`` as meta.json, in a private folder renamed into place at once."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".{entry.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, x in arrays.items():
            np.save(tmp / f"{name}.npy", x.numpy())
        (tmp / _META).write_text(json.dumps({"format": FORMAT, **meta}))
        try:
            tmp.rename(entry)
        except OSError:
            if not (entry / _META).is_file():  # another process renamed its copy first: keep that one
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read(entry: Path) -> ImageSet:
    meta = json.loads((entry / _META).read_text())
    for note in meta["warnings"]:
        warnings.warn(note, stacklevel=3)

    def mapped(name: str) -> torch.Tensor:
        return torch.from_numpy(np.load(entry / f"{name}.npy", mmap_mode="c"))

    labels = mapped("labels") if (entry / "labels.npy").is_file() else None
    extras = {p.stem[len("extra.") :]: mapped(p.stem) for p in sorted(entry.glob("extra.*.npy"))}
    return ImageSet(mapped("images"), labels, meta["class_names"], meta["name"], extras)
