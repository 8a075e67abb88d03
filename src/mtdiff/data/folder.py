"""Image folders in ImageNet layout (``root/<class_name>/<image files>``), decoded up front.

Every file is opened and fully decoded before training starts, so a corrupt or truncated
file fails here, naming the file (or is skipped and counted, with ``on_bad="skip"``).
"""

from __future__ import annotations

import functools
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .imageset import IMAGE_EXTENSIONS, DataError, ImageSet

__all__ = ["load_image_folder", "ALPHA_BACKGROUND", "ON_BAD_CHOICES"]

ON_BAD_CHOICES: tuple[str, ...] = ("error", "skip")

# Transparent pixels (RGBA, LA, palette with transparency) are composited onto
# this background before dropping the alpha channel.
ALPHA_BACKGROUND = (0, 0, 0)


def check_decode_args(*, on_bad: str, channels: int, image_size: int) -> None:
    """The arguments every folder loader shares, checked before any file is opened."""
    if on_bad not in ON_BAD_CHOICES:
        raise ValueError(f"on_bad must be one of {', '.join(map(repr, ON_BAD_CHOICES))}; got {on_bad!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")


def _to_mode(img, channels: int):
    """Convert a decoded PIL image to "L" (channels=1) or "RGB" (channels=3), explicitly
    handling alpha, palette and high-bit-depth modes."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale (PNG 16-bit opens as I;16, older Pillow as I): scale to 8 bit.
        # PIL's own convert("L") clips instead of scaling, hence numpy.
        a = np.asarray(img).astype(np.int64)
        a = np.clip(a, 0, 65535)
        img = Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    elif mode == "F":
        img = img.convert("L")  # 32-bit float: values clipped to 0..255
    elif mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "1":
        img = img.convert("L")
    elif mode == "PA":
        img = img.convert("RGBA")

    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        img = Image.alpha_composite(background, rgba).convert("RGB")

    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)
    return img


def _center_crop_resize(img, size: int):
    from PIL import Image

    w, h = img.size
    side = min(w, h)
    if (w, h) != (side, side):
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if side != size:
        resample = getattr(Image, "Resampling", Image).BICUBIC
        img = img.resize((size, size), resample=resample)
    return img


def _list_image_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"image folder {root} is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {root} has no class folders: expected root/<class_name>/<image files>")
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        d = root / cls
        found = sorted(
            p
            for p in d.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not found:
            raise DataError(
                f"class folder {d} has no image files: expected files with extensions "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}"
            )
        files.extend((p, label) for p in found)
    return classes, files


def _decode(path: Path, *, channels: int, image_size: int) -> tuple[np.ndarray | None, str]:
    """(uint8 [C, H, W], "") for a readable image file, else (None, why)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.load()
            img = im.copy()
    except Exception as e:  # any decoder failure means a corrupt/unsupported file
        return None, f"{type(e).__name__}: {e}"
    try:  # honour the EXIF orientation of photos; a broken EXIF block is not fatal
        img = ImageOps.exif_transpose(img)
    except Exception:
        pass
    a = np.asarray(_center_crop_resize(_to_mode(img, channels), image_size), dtype=np.uint8)
    return (a[None] if a.ndim == 2 else a.transpose(2, 0, 1)), ""


def _decode_all(paths: list[Path], channels: int, image_size: int, workers: int):
    """``_decode`` of each path, in order, by ``workers`` threads (PIL decodes and resizes without the GIL),
    at most a few thousand images in flight."""
    decode = functools.partial(_decode, channels=channels, image_size=image_size)
    chunk = 64 * max(1, workers)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(paths), chunk):
            yield from pool.map(decode, paths[start : start + chunk])


def load_image_folder(
    root,
    *,
    image_size: int,
    channels: int = 3,
    on_bad: str = "error",
    workers: int = 1,
) -> ImageSet:
    """Load ``root/<class_name>/<image>`` into memory (ImageNet layout).

    Classes are the sorted sub-folder names (label = index in that order); image files
    are png/jpg/jpeg/bmp/webp (case-insensitive). Every image is fully decoded, converted
    to ``channels`` (1 -> greyscale, 3 -> RGB; alpha composited onto black, 16-bit scaled
    to 8-bit, palette expanded), center-cropped to a square and resized (bicubic) to
    ``image_size``.

    on_bad: "error" raises DataError on the first corrupt/truncated file; "skip" skips
    such files and emits one warning at the end. ``workers``: threads that decode at once (the
    order, and so the result, is the same for any number).
    """
    from tqdm import tqdm

    check_decode_args(on_bad=on_bad, channels=channels, image_size=image_size)
    root = Path(root).expanduser()
    classes, files = _list_image_folder(root)

    images = np.empty((len(files), channels, image_size, image_size), dtype=np.uint8)
    labels = np.empty(len(files), dtype=np.int64)
    bad: list[tuple[Path, str]] = []
    n = 0
    decoded = _decode_all([path for path, _ in files], channels, image_size, workers)
    bar = tqdm(zip(files, decoded), total=len(files), desc=f"loading {root.name or root}", unit="img", disable=None)
    for (path, label), (a, reason) in bar:
        if a is None:
            if on_bad == "error":
                decoded.close()  # cancels what is still queued
                raise DataError(
                    f"cannot decode image {path}: expected a complete, readable image file "
                    f"({reason}); pass on_bad='skip' to skip such files"
                )
            bad.append((path, reason))
            continue
        images[n] = a
        labels[n] = label
        n += 1

    if bad:
        first = "; ".join(f"{p} ({r})" for p, r in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        warnings.warn(
            f"skipped {len(bad)} corrupt image file(s) of {len(files)} in {root}: {first}{more}",
            stacklevel=2,
        )
    if n == 0:
        raise DataError(f"no readable images in {root}: all {len(files)} files are corrupt")
    return ImageSet(
        images=torch.from_numpy(images[:n].copy() if n < len(files) else images),
        labels=torch.from_numpy(labels[:n].copy() if n < len(files) else labels),
        class_names=classes,
        name=f"folder:{root}",
    )


# ------------------------------------------------------------------------ dispatch
