"""What the page's inputs become for the model, without gradio: a drawing (black strokes on a white canvas) or
an upload of any size or colour -> pixels [1, C, S, S] in [-1, 1] (a light background is inverted, so a digit is
white on black as in MNIST), the hole painted over an image -> a known-pixel mask, strokes -> a class map."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import InputError

__all__ = ["as_rgba", "to_pixels", "painted", "hole_mask", "class_map", "upscale", "colour_map", "INK"]

INK = 0.1  # a pixel with more than this share of the full range above the background is ink (drawn or written)
DIGIT_BOX = 20 / 32  # a digit fills this share of the frame, as MNIST's 20 px box in 28 px padded to 32
SIDES = (8, 4096)  # the smallest and largest side of a picture taken, in pixels


def as_rgba(value: Any, what: str = "the image") -> np.ndarray:
    """An image (PIL, or a uint8 / float array [H, W], [H, W, 1 | 3 | 4]) as uint8 RGBA [H, W, 4]."""
    if value is None:
        raise InputError(f"{what} is empty: draw on the canvas or upload an image")
    if isinstance(value, Image.Image):
        if value.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16/32-bit greyscale: scaled to its maximum
            a = np.asarray(value, dtype=np.float64)
            value = a / max(float(a.max()), 1e-12)
        else:
            value = np.asarray(value.convert("RGBA"))
    a = np.asarray(value)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or 0 in a.shape:
        raise InputError(f"{what} must be an image [H, W] or [H, W, 3 | 4], got an array of shape {a.shape}")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
            raise InputError(f"{what} must be numbers, got {a.dtype}")
        a = np.clip(a * 255.0 if a.size and float(np.nanmax(a)) <= 1 else a, 0, 255)
        a = np.nan_to_num(a).round().astype(np.uint8)
    if not (SIDES[0] <= min(a.shape[:2]) and max(a.shape[:2]) <= SIDES[1]):
        raise InputError(f"{what} must be {SIDES[0]} to {SIDES[1]} pixels on each side, got {a.shape[1]}x{a.shape[0]}")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    if a.shape[-1] == 3:
        a = np.concatenate([a, np.full(a.shape[:2] + (1,), 255, np.uint8)], -1)
    return a


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA uint8 -> RGB float [H, W, 3] in [0, 1], transparent pixels white (the canvas)."""
    x = rgba.astype(np.float32) / 255
    return x[..., :3] * x[..., 3:] + (1 - x[..., 3:])


def to_pixels(value: Any, size: int, channels: int = 1, *, fit: str = "digit", what: str = "the image"):
    """A drawing or an upload as the model's input: (pixels [1, C, size, size] in [-1, 1], uint8 [size, size(, 3)]
    for the page). Transparent pixels are white (the canvas); for one-channel runs the picture is made grey and,
    on a light background (the median of its border), inverted, so ink is white on black. ``fit="digit"``: a
    picture of another size is cropped to its ink, scaled to fill ``DIGIT_BOX`` of the frame, centred on its
    centre of mass and stretched to peak white (as MNIST's digits); ``"frame"``: the whole picture is resized
    to the frame (box filter: an upload enlarged by a whole factor comes back exactly). A picture of the model's
    size is kept as it is. An empty picture (no ink) is an :class:`InputError`."""
    if fit not in ("digit", "frame"):
        raise ValueError(f"fit must be 'digit' or 'frame', got {fit!r}")
    rgb = _on_white(as_rgba(value, what))
    x = rgb.mean(-1, keepdims=True) if channels == 1 else rgb
    if channels == 1:
        border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]]).ravel()
        if np.median(border) > 0.5:
            x = 1 - x
    elif channels != 3:
        raise InputError(f"the app shows one- or three-channel images, this run has {channels} channels")
    ink = x.max(-1) - (0 if channels == 1 else x.min())
    if not (ink > INK).any():
        raise InputError(f"{what} is empty: draw with the mouse (black on the white canvas) or upload a picture")
    if x.shape[:2] != (size, size):
        x = _digit(x, ink > INK, size) if fit == "digit" else _resize(x, size)
    u8 = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
    pixels = torch.from_numpy(u8.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    return pixels, (u8[..., 0] if channels == 1 else u8)


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """float [H, W, C] in [0, 1] -> [size, size, C] (box filter when shrinking, bilinear when enlarging)."""
    h, w = x.shape[:2]
    method = Image.Resampling.BOX if h >= size and w >= size else Image.Resampling.BILINEAR
    chans = [np.asarray(Image.fromarray(x[..., c]).resize((size, size), method)) for c in range(x.shape[-1])]
    return np.clip(np.stack(chans, -1), 0, 1)


def _digit(x: np.ndarray, ink: np.ndarray, size: int) -> np.ndarray:
    """The ink's bounding box, padded square, scaled into the digit box and centred by its centre of mass."""
    rows, cols = np.nonzero(ink)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = max(r1 - r0, c1 - c0)
    square = np.zeros((side, side, x.shape[-1]), np.float32)
    dr, dc = (side - (r1 - r0)) // 2, (side - (c1 - c0)) // 2
    square[dr : dr + r1 - r0, dc : dc + c1 - c0] = x[r0:r1, c0:c1]
    box = max(1, round(size * DIGIT_BOX))
    small = _resize(square, box)
    mass = small.mean(-1)
    total = float(mass.sum()) or 1.0
    cy = float((mass.sum(1) * np.arange(box)).sum()) / total
    cx = float((mass.sum(0) * np.arange(box)).sum()) / total
    top = int(np.clip(round(size / 2 - 0.5 - cy), 0, size - box))
    left = int(np.clip(round(size / 2 - 0.5 - cx), 0, size - box))
    out = np.zeros((size, size, x.shape[-1]), np.float32)
    out[top : top + box, left : left + box] = small
    return out / max(float(out.max()), 1e-6)  # thin strokes lose contrast when shrunk: the ink's peak is white


def painted(layers: list | None, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Where any of an editor's ``layers`` (RGBA) is painted (alpha > 0): bool [H, W]; all False without layers
    (``shape``: the size to give then)."""
    masks = [as_rgba(layer, "a layer")[..., 3] > 0 for layer in layers or [] if layer is not None]
    if not masks:
        return np.zeros(shape or (1, 1), bool)
    h, w = masks[0].shape
    return np.logical_or.reduce([m for m in masks if m.shape == (h, w)])


def hole_mask(paint: np.ndarray, size: int) -> np.ndarray:
    """A painted area at any resolution -> the hole at the model's, bool [size, size]: the pixels that paint
    covers at least half of."""
    cover = np.asarray(Image.fromarray(paint.astype(np.float32)).resize((size, size), Image.Resampling.BOX))
    return cover >= 0.5


def class_map(value: Any, size: int, cls: int, num_classes: int, *, what: str = "the class mask") -> np.ndarray:
    """Strokes on a canvas -> a class map int64 [size, size]: class ``cls`` where the (digit-fitted) drawing has
    ink, 0 (the background) elsewhere."""
    if isinstance(cls, bool) or not isinstance(cls, int) or not 1 <= cls < num_classes:
        raise InputError(f"the class painted must be in [1, {num_classes - 1}] (0 is the background), got {cls!r}")
    _, grey = to_pixels(value, size, 1, fit="digit", what=what)
    return np.where(grey > INK * 255, cls, 0).astype(np.int64)


def upscale(u8: np.ndarray, factor: int = 8) -> Image.Image:
    """A small picture enlarged by a whole factor (nearest), for a canvas to paint on; :func:`to_pixels` with
    ``fit="frame"`` gives its pixels back exactly."""
    im = Image.fromarray(u8)
    return im.resize((im.width * factor, im.height * factor), Image.Resampling.NEAREST)


def colour_map(classes: np.ndarray, num_classes: int) -> np.ndarray:
    """A class map [H, W] as RGB uint8 [H, W, 3]: class 0 black, the others evenly spaced hues."""
    import colorsys

    palette = np.zeros((max(num_classes, 1), 3), np.uint8)
    for k in range(1, num_classes):
        palette[k] = [round(255 * c) for c in colorsys.hsv_to_rgb((k - 1) / max(num_classes - 1, 1), 0.8, 1.0)]
    return palette[np.clip(classes, 0, num_classes - 1)]
