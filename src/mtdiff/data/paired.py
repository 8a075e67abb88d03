"""Paired image folders in pix2pix layout (Cityscapes, night2day; Isola et al. 2017), decoded up front.

``root/{train,val,test}/*.jpg|png``: each file holds the two images of a pair side by side, A on the
left and B on the right, so its width is twice its height. With ``direction="AtoB"`` A is the
translation source and B the target (``BtoA`` swaps them). The target becomes ``ImageSet.images``
(the diffusion variable z_0) and the source the extra batch key ``"source"``: a modality
``{kind: image, source: source}`` is then the translation condition of Appendix E.1.

Every file is opened and fully decoded before training starts, so a corrupt or truncated file, or
one that is not two squares side by side, fails here naming the file (or is skipped and counted,
with ``on_bad="skip"``), as in :mod:`mtdiff.data.folder`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from .folder import _center_crop_resize, _to_mode, check_decode_args
from .imageset import IMAGE_EXTENSIONS, DataError, ImageSet

__all__ = ["DIRECTIONS", "PAIRED_SPLITS", "SOURCE_KEY", "load_paired_folder"]

PAIRED_SPLITS: tuple[str, ...] = ("train", "val", "test")
DIRECTIONS: tuple[str, ...] = ("AtoB", "BtoA")
SOURCE_KEY = "source"  # batch key of the translation source


def _list_split(root: Path, split: str) -> tuple[Path, list[Path]]:
    if not root.is_dir():
        raise DataError(f"paired image folder {root} does not exist or is not a directory")
    folder = root / split
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise DataError(
            f"paired image folder {root} has no {split}/ folder (expected root/{{train,val,test}}/"
            f"<A|B images>; sub-folders there: {present or 'none'})"
        )
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise DataError(
            f"paired image folder {folder} has no image files: expected files with extensions "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}, each the pair A|B side by side"
        )
    return folder, files


def _decode_pair(path: Path, channels: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One A|B file -> (A, B) uint8 [C, S, S]; raises on decoder failure or a wrong aspect ratio."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        img = im.copy()
    w, h = img.size
    if w != 2 * h:
        raise ValueError(f"image is {w}x{h}; a pair A|B side by side must be twice as wide as high")
    img = _to_mode(img, channels)
    halves = [_center_crop_resize(img.crop((left, 0, left + h, h)), image_size) for left in (0, h)]
    out = []
    for half in halves:
        a = np.asarray(half, dtype=np.uint8)
        out.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return out[0], out[1]


def load_paired_folder(
    root, split: str, *, image_size: int, channels: int = 3, on_bad: str = "error", direction: str = "AtoB"
) -> ImageSet:
    """Load ``root/<split>/*`` (pix2pix layout) into memory: target images plus ``extras["source"]``.

    Each file is split into its left (A) and right (B) square halves, converted to ``channels``
    (1 greyscale, 3 RGB; alpha composited onto black) and resized (bicubic) to ``image_size``.
    ``direction`` "AtoB": source A, target B; "BtoA": source B, target A (Cityscapes' label maps
    are the right half, so labels -> photo is BtoA). The set has no labels.

    on_bad: "error" raises DataError on the first corrupt/truncated file or one not twice as wide
    as high; "skip" skips such files and emits one warning at the end.
    """
    from tqdm import tqdm

    check_decode_args(on_bad=on_bad, channels=channels, image_size=image_size)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(map(repr, DIRECTIONS))}; got {direction!r}")
    if split not in PAIRED_SPLITS:
        raise DataError(f"unknown split {split!r} for a paired folder; valid: {', '.join(map(repr, PAIRED_SPLITS))}")
    folder, files = _list_split(Path(root).expanduser(), split)
    a_all = np.empty((len(files), channels, image_size, image_size), dtype=np.uint8)
    b_all = np.empty_like(a_all)
    bad: list[tuple[Path, str]] = []
    n = 0
    for path in tqdm(files, desc=f"loading {folder}", unit="pair", disable=None):
        try:
            a_all[n], b_all[n] = _decode_pair(path, channels, image_size)
        except Exception as e:  # any decoder failure or a wrong layout means an unusable file
            reason = f"{type(e).__name__}: {e}"
            if on_bad == "error":
                raise DataError(
                    f"cannot use paired image {path}: expected a complete, readable image of two "
                    f"squares A|B side by side ({reason}); pass on_bad='skip' to skip such files"
                ) from e
            bad.append((path, reason))
            continue
        n += 1

    if bad:
        first = "; ".join(f"{p} ({r})" for p, r in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        warnings.warn(
            f"skipped {len(bad)} unusable paired image file(s) of {len(files)} in {folder}: {first}{more}", stacklevel=2
        )
    if n == 0:
        raise DataError(f"no usable paired images in {folder}: all {len(files)} files are corrupt or not A|B pairs")
    source, target = (a_all[:n], b_all[:n]) if direction == "AtoB" else (b_all[:n], a_all[:n])
    return ImageSet(
        images=torch.from_numpy(np.ascontiguousarray(target)),
        labels=None,
        name=f"paired:{folder}:{direction}",
        extras={SOURCE_KEY: torch.from_numpy(np.ascontiguousarray(source))},
    )
