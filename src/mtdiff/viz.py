"""Image grids written with Pillow (no torchvision)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

__all__ = ["to_uint8", "to_pil", "from_pil", "make_grid", "save_grid", "load_image", "load_class_map"]


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] float -> uint8 with the same shape."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_pil(images: Tensor) -> list[Image.Image]:
    """[N, C, H, W] in [-1, 1] -> N PIL images (greyscale for one channel, RGB for three)."""
    arr = to_uint8(images).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


def from_pil(images, channels: int) -> Tensor:
    """PIL images (greyscale for one channel, RGB for three) -> float [N, C, H, W] in [-1, 1]
    (8-bit: 0 -> -1, 255 -> 1): the inverse of :func:`to_pil` and :func:`to_uint8`."""
    import numpy as np

    out = []
    for im in images:
        t = torch.from_numpy(np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float32).copy())
        out.append(t[None] if channels == 1 else t.permute(2, 0, 1))
    return torch.stack(out) / 127.5 - 1


def make_grid(images: Tensor, nrow: int | None = None, pad: int = 2, pad_value: int = 128) -> Tensor:
    """[N, C, H, W] in [-1, 1] -> uint8 [C, rows * (H + pad) + pad, ncol * (W + pad) + pad]."""
    n, c, h, w = images.shape
    ncol = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / ncol)
    grid = torch.full((c, rows * (h + pad) + pad, ncol * (w + pad) + pad), pad_value, dtype=torch.uint8)
    for i, img in enumerate(to_uint8(images)):
        r, col = divmod(i, ncol)
        grid[:, pad + r * (h + pad) :][:, :h, pad + col * (w + pad) :][:, :, :w] = img
    return grid


def save_grid(
    images: Tensor,
    path: str | Path,
    nrow: int | None = None,
    scale: int = 2,
    captions: list[str] | None = None,
    pad: int = 2,
) -> Path:
    """Save a grid PNG of [N, C, H, W] images in [-1, 1], upscaled by ``scale`` (nearest) for viewing;
    ``captions[i]`` is printed in the top-left corner of cell i."""
    grid = make_grid(images, nrow, pad=pad)
    arr = grid.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if captions:
        from PIL import ImageDraw

        img = img.convert("RGB")
        draw = ImageDraw.Draw(img)
        n, _, h, w = images.shape
        ncol = nrow or math.ceil(math.sqrt(n))
        for i, text in enumerate(captions[:n]):
            r, c = divmod(i, ncol)
            x, y = (pad + c * (w + pad)) * scale + 2, (pad + r * (h + pad)) * scale + 1
            draw.text((x, y), _fit(draw, str(text), w * scale - 3), fill=(255, 64, 64))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _fit(draw, text: str, width: float) -> str:
    """``text``, cut and ended with ".." where it is wider than ``width`` pixels (a caption stays in its tile)."""
    if draw.textlength(text) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "..") > width:
        text = text[:-1]
    return text + ".."


def load_image(path: str | Path, *, size: int, channels: int) -> Tensor:
    """One image file -> float [1, C, size, size] in [-1, 1]; a clear error if it is not that size."""
    try:
        with Image.open(path) as im:
            x = from_pil([im], channels)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None
    if x.shape[-2:] != (size, size):
        raise ValueError(f"{path}: image is {x.shape[-1]}x{x.shape[-2]}, the model expects {size}x{size}")
    return x


def load_class_map(path: str | Path, *, size: int, num_classes: int) -> Tensor:
    """A greyscale PNG whose pixel values are class indices -> LongTensor [1, size, size]."""
    import numpy as np

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L") if im.mode not in ("L", "P", "I", "I;16") else im)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None
    if arr.ndim != 2 or arr.shape != (size, size):
        raise ValueError(f"{path}: class map is {arr.shape[::-1]}, the model expects a {size}x{size} greyscale image")
    if int(arr.max()) >= num_classes:
        raise ValueError(f"{path}: pixel values are class indices and must be < {num_classes}; found {int(arr.max())}")
    return torch.from_numpy(arr.astype("int64"))[None]
