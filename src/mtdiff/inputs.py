"""What a user gives :meth:`Run.generate <mtdiff.runs.Run.generate>`, checked and read into the diffusion space:
images as pixels, each modality's value (``Modality.given``), and values known on some pixels only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .errors import InputError
from .models.autoencoder import PixelMap
from .viz import from_pil

if TYPE_CHECKING:
    from .trained import Run

__all__ = ["IMAGE", "Images", "Given", "read_given", "read_pixels", "check_count", "check_positive"]

IMAGE = "image"  # the image's key among the values given to Run.generate (the modalities' keys are their names)
Images = Tensor | Any  # a pixel tensor, a PIL image or a list of PIL images


@dataclass
class Given:
    """What :meth:`Run.generate` was given, in the diffusion space: ``known`` modality data; ``partial``
    {modality: (data, keep)} known on some pixels; ``image`` z_0 (pixels, keep) known on some pixels, or ``z0``
    (and its ``pixels``) known everywhere; ``n`` samples; ``names`` as given; ``captions`` the texts given."""

    n: int
    names: tuple[str, ...] = ()
    captions: list[str] | None = None
    known: dict[str, Tensor] = field(default_factory=dict)
    partial: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    image: tuple[Tensor, Tensor] | None = None
    z0: Tensor | None = None
    pixels: Tensor | None = None


def read_given(run: Run, given: Mapping[str, Any], n: int | None) -> Given:
    """``given`` checked and mapped into ``run``'s diffusion space (see :meth:`Run.generate`)."""
    if not isinstance(given, Mapping):
        raise InputError(f"given must be a dict {{modality: value}}, got {type(given).__name__}")
    names = [IMAGE, *run.model.modalities]
    bad = [k for k in given if k not in names]
    if bad:
        raise InputError(f"given: {bad[0]!r} is not a modality of this run; give any of {names}")
    if n is not None:
        check_count(n, "n")
    values = {k: _given_value(run, k, v, n) for k, v in given.items()}
    sizes = {len(x) for x, _ in values.values()} - {1}
    if len(sizes) > 1 or (n is not None and sizes - {n}):
        counts = {k: len(x) for k, (x, _) in values.items()}
        raise InputError(f"given values must have one row or n each (n = {n}), got {counts}")
    n = n or (sizes.pop() if sizes else 1 if values else None)
    if n is None:
        raise InputError("n (the number of samples) is needed when nothing is given")
    values = {k: (_rows(x, n), None if keep is None else _rows(keep, n)) for k, (x, keep) in values.items()}
    return _place(run, values, n, _texts(given, n))


def _given_value(run: Run, name: str, value: Any, n: int | None) -> tuple[Tensor, Tensor | None]:
    """One given value as (data [N, ...] on the run's device, keep [N, 1, H, W] or None)."""
    value, keep = value if _is_partial(value) else (value, None)
    mod = run.model.modalities[name] if name != IMAGE else None
    if mod is None or mod.image_data:
        x = run.pixels(value, f"given[{name!r}]")
    else:
        try:
            x = mod.given(value, n).to(run.device)
        except (ValueError, TypeError, RuntimeError) as e:
            raise InputError(f"given[{name!r}]: {e}") from None
    if keep is None:
        return x, None
    s = x.shape[-2:]
    if x.ndim < 3 or not isinstance(run.latent, PixelMap):
        raise InputError(f"given[{name!r}]: only images and class maps in pixel space can be partly known")
    keep = keep.to(run.device, torch.float32)
    keep = keep.reshape(1, 1, *keep.shape) if keep.ndim == 2 else keep[:, None] if keep.ndim == 3 else keep
    if keep.ndim != 4 or keep.shape[1] != 1 or keep.shape[-2:] != s or len(keep) not in (1, len(x)):
        raise InputError(
            f"given[{name!r}]: keep must be [{len(x)}, 1, {s[0]}, {s[1]}] (1 = known), got {tuple(keep.shape)}"
        )
    return x, keep


def _place(run: Run, values: dict[str, tuple[Tensor, Tensor | None]], n: int, captions) -> Given:
    """Given values (pixels, data) sorted into what the sampler knows: exactly, on some pixels, z_0."""
    g, m = Given(n, names=tuple(values), captions=captions), run.model.modalities
    for name, (x, keep) in values.items():
        view = None if name == IMAGE or keep is None else m[name].view_of_image(x, keep)
        if name == IMAGE and keep is None:
            g.z0, g.pixels = run.latent.encode(x), x
        elif name == IMAGE or view is not None:
            if g.image is not None:
                raise InputError(f"the image is given twice (as {', '.join(values)}); give it once")
            g.image = (x, keep) if view is None else (view, keep)
            if view is not None:
                g.known[name] = view
        elif keep is not None:
            g.partial[name] = (x, keep)
        else:
            g.known[name] = run.latent.encode_data({name: x}, m)[name]
    for name, mod in m.items():  # a view of a partly given image (a masked image) is known with it
        view = None if g.image is None or name in values else mod.view_of_image(*g.image)
        if view is not None:
            g.known[name] = view
    return g


def read_pixels(images: Images, channels: int, size: int, device, what: str = "images") -> Tensor:
    """Images as a float tensor [N, C, H, W] in [-1, 1] on ``device``, checked against the run's data
    (``channels``, ``size``). PIL images are converted (8-bit: 0 -> -1, 255 -> 1)."""
    if not isinstance(images, Tensor):
        images = [images] if not isinstance(images, (list, tuple)) else images
        images = _from_pil(images, channels, what)
    if images.ndim == 3:
        images = images[None]
    c, s = channels, size
    if images.ndim != 4 or tuple(images.shape[1:]) != (c, s, s) or len(images) == 0:
        raise InputError(
            f"{what} must be [N, {c}, {s}, {s}] pixels in [-1, 1] (N >= 1) for this run, got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise InputError(f"{what} must be floats in [-1, 1], got {images.dtype} (PIL images are converted)")
    return images.to(device, torch.float32)


def check_count(n: int, what: str) -> int:
    """``n``, an integer >= 1, else an :class:`InputError` naming ``what``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"{what} must be an integer >= 1, got {n!r}")
    return n


def check_positive(x: float, what: str) -> float:
    """``x`` as a float, a finite number > 0 (a guidance scale), else an :class:`InputError` naming ``what``."""
    if not isinstance(x, (int, float)) or isinstance(x, bool) or not x > 0 or x != x or x == float("inf"):
        raise InputError(f"{what} must be a number > 0 (1 = no guidance), got {x!r}")
    return float(x)


def _is_partial(value: Any) -> bool:
    """Whether a given value is ``(value, keep)``: known on the pixels where the tensor ``keep`` is 1."""
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], Tensor)


def _rows(x: Tensor, n: int) -> Tensor:
    """``x`` [1 or n, ...] as n rows."""
    return x if len(x) == n else x.expand(n, *x.shape[1:])


def _texts(given: Mapping[str, Any], n: int) -> list[str] | None:
    """The captions given as text, one per sample (cycled), for grids; None when none was."""
    for value in given.values():
        texts = [value] if isinstance(value, str) else value
        if isinstance(texts, (list, tuple)) and texts and all(isinstance(v, str) for v in texts) and value != "each":
            return [texts[i % len(texts)] for i in range(n)]
    return None


def _from_pil(images: list, channels: int, what: str) -> Tensor:
    """PIL images -> float [N, C, H, W] in [-1, 1]; anything else is an InputError naming ``what``."""
    for im in images:
        if not hasattr(im, "convert"):
            raise InputError(f"{what} must be a pixel tensor or PIL images, got {type(im).__name__}")
    return from_pil(images, channels)
