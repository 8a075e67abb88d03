import math

import pytest
import torch

from mtdiff.data.masking import (
    apply_mask,
    full_mask,
    half_mask,
    make_mask,
    patch_side,
    random_patch_mask,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def is_binary(t: torch.Tensor) -> bool:
    return bool(((t == 0) | (t == 1)).all())


@pytest.mark.parametrize("size", [8, 32, 64])
def test_random_mask_shape_dtype_binary(size):
    m = random_patch_mask(16, size, generator=gen(0))
    assert m.shape == (16, 1, size, size)
    assert m.dtype == torch.float32
    assert is_binary(m)


def test_patch_side_matches_paper():
    assert patch_side(64) == 16
    assert patch_side(32) == 8
    assert patch_side(2, 0.1) == 1  # never empty


def test_reproducible_and_seed_dependent():
    a = random_patch_mask(32, 32, generator=gen(123))
    b = random_patch_mask(32, 32, generator=gen(123))
    c = random_patch_mask(32, 32, generator=gen(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_num_patches_zero_all_ones():
    m = random_patch_mask(8, 32, generator=gen(1), num_patches=0)
    assert torch.equal(m, torch.ones_like(m))
    m = random_patch_mask(8, 32, generator=gen(1), max_patches=0)
    assert torch.equal(m, torch.ones_like(m))


def test_fixed_num_patches_never_all_ones():
    m = random_patch_mask(500, 32, generator=gen(2), num_patches=1)
    masked = (1 - m).flatten(1).sum(1)
    p = patch_side(32)
    assert (masked >= 1).all()  # a patch always covers at least its corner pixel
    assert (masked <= p * p).all()
    # a single clipped patch is a rectangle: masked count == rows * cols
    rows = (1 - m)[:, 0].amax(2).sum(1)
    cols = (1 - m)[:, 0].amax(1).sum(1)
    assert torch.equal(rows * cols, masked)


@pytest.mark.parametrize("max_patches", [1, 3, 10])
def test_masked_area_bounded_by_max_patches(max_patches):
    size = 32
    p = patch_side(size)
    m = random_patch_mask(2000, size, generator=gen(3), max_patches=max_patches)
    masked_frac = (1 - m).flatten(1).mean(1)
    assert (masked_frac <= max_patches * p * p / size**2 + 1e-9).all()


def test_number_of_patches_distribution():
    """m ~ Uniform{0..K}: all-ones masks happen iff m=0, so with probability 1/(K+1)."""
    n, k = 20000, 10
    m = random_patch_mask(n, 32, generator=gen(4), max_patches=k)
    all_ones = (m.flatten(1) == 1).all(1).double().mean().item()
    prob = 1 / (k + 1)
    se = math.sqrt(prob * (1 - prob) / n)
    assert abs(all_ones - prob) < 5 * se


def test_masked_area_grows_with_num_patches():
    areas = [(1 - random_patch_mask(2000, 32, generator=gen(5), num_patches=k)).mean().item() for k in (1, 3, 6, 10)]
    assert all(a < b for a, b in zip(areas, areas[1:]))


def test_every_pixel_can_be_masked_including_corners():
    m = random_patch_mask(4000, 32, generator=gen(6))
    ever_masked = (m[:, 0] == 0).any(0)
    assert ever_masked[0, 0] and ever_masked[-1, -1]
    assert ever_masked[0, -1] and ever_masked[-1, 0]
    assert ever_masked.all()


def test_clipping_at_border():
    # a patch can extend past the border: some masks are clipped (masked count < p*p)
    p = patch_side(32)
    m = random_patch_mask(500, 32, generator=gen(7), num_patches=1)
    counts = (1 - m).flatten(1).sum(1)
    assert (counts < p * p).any() and (counts == p * p).any()


def test_random_mask_device_and_generator_required():
    m = random_patch_mask(2, 16, generator=gen(0), device="cpu")
    assert m.device.type == "cpu"
    with pytest.raises(TypeError):
        random_patch_mask(2, 16, generator=None)
    with pytest.raises(ValueError):
        random_patch_mask(2, 16, generator=gen(0), max_patches=-1)
    with pytest.raises(ValueError):
        random_patch_mask(2, 16, generator=gen(0), patch_frac=0.0)


@pytest.mark.parametrize("side", ["right", "left", "top", "bottom"])
@pytest.mark.parametrize("size", [32, 64])
def test_half_mask_keeps_half(side, size):
    m = half_mask(3, size, side=side)
    assert m.shape == (3, 1, size, size) and is_binary(m)
    assert m.sum().item() == 3 * size * size / 2
    kept = m[0, 0]
    h = size // 2
    region = {
        "right": kept[:, h:],
        "left": kept[:, :h],
        "top": kept[:h, :],
        "bottom": kept[h:, :],
    }[side]
    assert (region == 1).all()


def test_half_mask_sides_complementary():
    assert torch.equal(half_mask(1, 32, side="left") + half_mask(1, 32, side="right"), torch.ones(1, 1, 32, 32))
    assert torch.equal(half_mask(1, 32, side="top") + half_mask(1, 32, side="bottom"), torch.ones(1, 1, 32, 32))
    with pytest.raises(ValueError):
        half_mask(1, 32, side="middle")


def test_full_and_none_masks():
    assert torch.equal(full_mask(2, 8), torch.zeros(2, 1, 8, 8))
    assert torch.equal(make_mask("full", 2, 8), torch.zeros(2, 1, 8, 8))
    assert torch.equal(make_mask("none", 2, 8), torch.ones(2, 1, 8, 8))


def test_make_mask_dispatch():
    a = make_mask("random", 4, 32, generator=gen(9), max_patches=5)
    b = random_patch_mask(4, 32, generator=gen(9), max_patches=5)
    assert torch.equal(a, b)
    assert torch.equal(make_mask("half", 2, 16, side="top"), half_mask(2, 16, side="top"))
    with pytest.raises(ValueError) as e:
        make_mask("circle", 2, 16)
    for name in ("random", "half", "full", "none"):
        assert name in str(e.value)


def test_apply_mask_zeroes_exactly_masked_pixels():
    g = gen(10)
    img = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1 + 1e-3  # no exact zeros
    img[img == 0] = 0.5
    keep = random_patch_mask(8, 32, generator=g)
    out = apply_mask(img, keep)
    assert out.shape == img.shape
    zero = out == 0
    assert torch.equal(zero, (keep == 0).expand_as(img))
    assert torch.equal(out[~zero], img[~zero])
    with pytest.raises(ValueError):
        apply_mask(img, torch.ones(8, 1, 16, 16))
