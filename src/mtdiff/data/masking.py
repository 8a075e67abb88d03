"""Inpainting masks of the MT-Diffusion paper (section 4.1, appendix E.2).

All masks are *keep* masks: float32 tensors ``[B, 1, H, W]`` with 1 = pixel known /
kept and 0 = masked out. A masked image is ``image * keep`` (masked pixels become 0,
which with data in [-1, 1] is mid-grey, distinct from the black background).

Random masks draw every random number from an explicit ``torch.Generator`` so that
results are reproducible.
"""

from __future__ import annotations

import torch

__all__ = [
    "MASK_KINDS",
    "HALF_SIDES",
    "patch_side",
    "random_patch_mask",
    "half_mask",
    "full_mask",
    "none_mask",
    "apply_mask",
    "make_mask",
]

MASK_KINDS: tuple[str, ...] = ("random", "half", "full", "none")
HALF_SIDES: tuple[str, ...] = ("right", "left", "top", "bottom")


def _check_dims(batch: int, size: int) -> None:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
        raise ValueError(f"batch must be an int >= 0, got {batch!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")


def patch_side(size: int, patch_frac: float = 0.25) -> int:
    """Side of one square patch: round(patch_frac * size), at least 1 (16 at 64, 8 at 32)."""
    if not 0.0 < patch_frac <= 1.0:
        raise ValueError(f"patch_frac must be in (0, 1], got {patch_frac!r}")
    return max(1, int(round(patch_frac * size)))


def random_patch_mask(
    batch: int,
    size: int,
    *,
    generator: torch.Generator,
    max_patches: int = 10,
    min_patches: int = 0,
    num_patches: int | None = None,
    patch_frac: float = 0.25,
    device=None,
) -> torch.Tensor:
    """Random square-patch keep mask, float32 [batch, 1, size, size].

    Per sample, m ~ Uniform{min_patches, ..., max_patches} (inclusive) patches are masked, or
    exactly ``num_patches`` when given. Each patch is a square of side
    ``round(patch_frac * size)`` whose top-left corner (x, y) is uniform over the whole
    image; it is clipped at the border (rows y:min(y+p, size)), and patches may overlap.
    Since a corner always lies inside the image, every patch masks at least one pixel, so
    the mask is all ones iff m = 0.

    Randomness is drawn on ``generator.device``; the result is put on ``device``
    (default: the generator's device).
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"random_patch_mask needs generator=torch.Generator(...), got {type(generator).__name__}")
    _check_dims(batch, size)
    if isinstance(max_patches, bool) or not isinstance(max_patches, int) or max_patches < 0:
        raise ValueError(f"max_patches must be an int >= 0, got {max_patches!r}")
    if isinstance(min_patches, bool) or not isinstance(min_patches, int) or not 0 <= min_patches <= max_patches:
        raise ValueError(f"min_patches must be an int in [0, max_patches={max_patches}], got {min_patches!r}")
    if num_patches is not None and (
        isinstance(num_patches, bool) or not isinstance(num_patches, int) or num_patches < 0
    ):
        raise ValueError(f"num_patches must be None or an int >= 0, got {num_patches!r}")
    p = patch_side(size, patch_frac)
    gdev = generator.device
    out_dev = torch.device(device) if device is not None else gdev

    if num_patches is None:
        k_max = max_patches
        m = torch.randint(min_patches, max_patches + 1, (batch,), generator=generator, device=gdev)
    else:
        k_max = num_patches
        m = torch.full((batch,), num_patches, dtype=torch.long, device=gdev)
    xy = torch.randint(0, size, (2, batch, k_max), generator=generator, device=gdev)
    m, xy = m.to(out_dev), xy.to(out_dev)
    x, y = xy[0], xy[1]  # [B, K] column / row of each patch's top-left corner

    # Patch k of sample b covers rows[b, k, :] x cols[b, k, :]; the union over k is a
    # batched outer product: counts[b] = rows[b]^T @ cols[b] (exact small integers).
    coords = torch.arange(size, device=out_dev)
    active = torch.arange(k_max, device=out_dev)[None, :] < m[:, None]  # [B, K]
    rows = (coords >= y[..., None]) & (coords < y[..., None] + p) & active[..., None]  # [B, K, H]
    cols = (coords >= x[..., None]) & (coords < x[..., None] + p)  # [B, K, W]; clipped at border
    counts = torch.bmm(rows.transpose(1, 2).to(torch.float32), cols.to(torch.float32))  # [B, H, W]
    masked = counts > 0
    return (~masked).to(torch.float32)[:, None]


def half_mask(batch: int, size: int, *, side: str = "right", device=None) -> torch.Tensor:
    """Keep mask that keeps one half of the image, float32 [batch, 1, size, size].

    ``side`` names the half that is KEPT ("right" keeps columns size-size//2..size-1 and
    masks the left half). For odd ``size`` the kept half is size//2 wide, the middle
    row/column is masked.
    """
    _check_dims(batch, size)
    if side not in HALF_SIDES:
        raise ValueError(f"side must be one of {', '.join(map(repr, HALF_SIDES))}; got {side!r}")
    keep = torch.zeros(batch, 1, size, size, dtype=torch.float32, device=device)
    h = size // 2
    if h == 0:
        return keep
    if side == "right":
        keep[..., :, size - h :] = 1.0
    elif side == "left":
        keep[..., :, :h] = 1.0
    elif side == "top":
        keep[..., :h, :] = 1.0
    else:  # bottom
        keep[..., size - h :, :] = 1.0
    return keep


def full_mask(batch: int, size: int, *, device=None) -> torch.Tensor:
    """The paper's "complete mask": nothing known (all zeros), float32 [batch, 1, size, size]."""
    _check_dims(batch, size)
    return torch.zeros(batch, 1, size, size, dtype=torch.float32, device=device)


def none_mask(batch: int, size: int, *, device=None) -> torch.Tensor:
    """No masking: everything known (all ones), float32 [batch, 1, size, size]."""
    _check_dims(batch, size)
    return torch.ones(batch, 1, size, size, dtype=torch.float32, device=device)


def apply_mask(image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``image * keep``: masked pixels become 0. ``keep`` [B, 1, H, W] broadcasts over channels."""
    if keep.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"mask spatial shape {tuple(keep.shape[-2:])} does not match image {tuple(image.shape[-2:])}")
    return image * keep.to(dtype=image.dtype, device=image.device)


def make_mask(
    kind: str,
    batch: int,
    size: int,
    *,
    generator: torch.Generator | None = None,
    **kw,
) -> torch.Tensor:
    """Dispatch by name: "random" (random_patch_mask; needs generator), "half"
    (half_mask; side=...), "full" (all zeros) or "none" (all ones). Extra keyword
    arguments go to the chosen function (e.g. max_patches, num_patches, side, device)."""
    if kind == "random":
        return random_patch_mask(batch, size, generator=generator, **kw)
    if kind == "half":
        return half_mask(batch, size, **kw)
    if kind == "full":
        return full_mask(batch, size, **kw)
    if kind == "none":
        return none_mask(batch, size, **kw)
    raise ValueError(f"unknown mask kind {kind!r}; choices: {', '.join(map(repr, MASK_KINDS))}")
