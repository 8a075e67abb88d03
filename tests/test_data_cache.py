"""Decoded image folders memory-mapped from the data cache: the same set as decoding, no decoding the second
time, a changed file decodes again, skipped files are still reported, and a cache that cannot be used costs
speed only."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import paired_folder, tiny
from PIL import Image

import mtdiff.data
from mtdiff.build import load_data
from mtdiff.config import ConfigError
from mtdiff.data import load_source
from mtdiff.data.cache import cache_dir
from mtdiff.distributed import World, main_first


def _folder(root, n: int = 6):
    rng = np.random.default_rng(0)
    for i in range(n):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / f"c{i % 2}" / f"{i}.png")
    return root


@pytest.fixture
def decodes(monkeypatch):
    """Counts the decodes of image folders that load_source makes."""
    count = []
    real = mtdiff.data.load_image_folder
    monkeypatch.setattr(mtdiff.data, "load_image_folder", lambda *a, **k: count.append(1) or real(*a, **k))
    return count


def _mapped_from(x: torch.Tensor):
    """The file whose memory mapping holds ``x``'s data (Linux), else None."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps")
    for line in maps.read_text().splitlines():
        span, *_, name = line.split(maxsplit=5) if len(line.split()) >= 6 else (line.split()[0], "")
        lo, hi = (int(v, 16) for v in span.split("-"))
        if lo <= x.data_ptr() < hi:
            return Path(name.strip()) if name.strip() else None
    return None


def _same(a, b):
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
    torch.testing.assert_close(a.labels, b.labels, rtol=0, atol=0)
    assert (a.class_names, a.name) == (b.class_names, b.name)


def test_second_load_maps_the_decoded_set_without_decoding(tmp_path, decodes):
    root = _folder(tmp_path / "f")
    plain = load_source("folder", "train", root=root, image_size=16)
    first = load_source("folder", "train", root=root, image_size=16, cache=tmp_path / "cache")
    second = load_source("folder", "train", root=root, image_size=16, cache=tmp_path / "cache")
    assert len(decodes) == 2  # plain and first; second came from the cache
    _same(plain, first)
    _same(plain, second)
    assert _mapped_from(second.images) == tmp_path / "cache" / next((tmp_path / "cache").iterdir()) / "images.npy"
    second.images[0] = 0  # copy-on-write: the mapped file is not changed
    _same(plain, load_source("folder", "train", root=root, image_size=16, cache=tmp_path / "cache"))
    load_source("folder", "train", root=root, image_size=8, cache=tmp_path / "cache")  # other options: decoded
    assert len(decodes) == 3
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_a_changed_file_is_decoded_again(tmp_path, decodes):
    root = _folder(tmp_path / "f")
    load_source("folder", "train", root=root, image_size=16, cache=tmp_path / "cache")
    Image.new("RGB", (20, 20), (255, 255, 255)).save(root / "c0" / "0.png")
    os.utime(root / "c0" / "0.png", ns=(1, 1))  # a new mtime even on a coarse clock
    changed = load_source("folder", "train", root=root, image_size=16, cache=tmp_path / "cache")
    assert len(decodes) == 2 and changed.images[0].min() == 255
    (root / "c1" / "extra.png").write_bytes((root / "c1" / "1.png").read_bytes())
    assert len(load_source("folder", "train", root=root, image_size=16, cache=tmp_path / "cache")) == 7


def test_skipped_files_are_reported_on_every_load(tmp_path):
    root = _folder(tmp_path / "f")
    (root / "c0" / "broken.png").write_bytes(b"not a png")
    for _ in range(2):
        with pytest.warns(UserWarning, match="skipped 1 corrupt image file") as rec:
            data = load_source("folder", "train", root=root, image_size=16, on_bad="skip", cache=tmp_path / "c")
        assert len(rec) == 1 and len(data) == 6


def test_a_corrupt_file_fails_as_without_a_cache_and_leaves_no_entry(tmp_path):
    root = _folder(tmp_path / "f")
    (root / "c0" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(mtdiff.data.DataError, match="broken.png"):
        load_source("folder", "train", root=root, image_size=16, cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_an_unusable_cache_costs_speed_not_the_data(tmp_path, decodes):
    root = _folder(tmp_path / "f")
    (tmp_path / "file").write_text("not a directory")
    with pytest.warns(UserWarning, match="cannot keep the decoded images"):
        data = load_source("folder", "train", root=root, image_size=16, cache=tmp_path / "file")
    _same(data, load_source("folder", "train", root=root, image_size=16))
    load_source("folder", "train", root=root, image_size=16, cache=tmp_path / "cache")
    (entry,) = (tmp_path / "cache").iterdir()
    (entry / "images.npy").write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="damaged cache entry"):
        again = load_source("folder", "train", root=root, image_size=16, cache=tmp_path / "cache")
    _same(data, again)
    assert len(decodes) == 4  # the unusable cache, the plain load, the first cached load, the damaged entry


def test_paired_folders_keep_their_source_images(tmp_path):
    root = paired_folder(tmp_path / "p")
    plain = load_source("paired", "train", root=root, image_size=8, channels=3)
    for _ in range(2):
        cached = load_source("paired", "train", root=root, image_size=8, channels=3, cache=tmp_path / "cache")
        assert cached.labels is None and cached.extras.keys() == {"source"}
        torch.testing.assert_close(cached.extras["source"], plain.extras["source"], rtol=0, atol=0)
        torch.testing.assert_close(cached.images, plain.images, rtol=0, atol=0)


def test_the_config_key(tmp_path, monkeypatch, decodes):
    root = _folder(tmp_path / "f")
    monkeypatch.setenv("MTDIFF_CACHE", str(tmp_path / "env"))
    assert cache_dir(True) == tmp_path / "env" and cache_dir(False) is None
    assert cache_dir("~/x") == Path.home() / "x"
    monkeypatch.delenv("MTDIFF_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir(True) == tmp_path / "xdg" / "mtdiff"
    source = ["data.source=folder", f"data.root={root}", "data.image_size=16", "data.channels=3"]
    for _ in range(2):
        load_data(tiny("mnist-ddpm", *source))
    assert len(decodes) == 1 and len(list((tmp_path / "xdg" / "mtdiff").iterdir())) == 1
    load_data(tiny("mnist-ddpm", *source, "data.cache=off"))  # YAML's off is false
    assert len(decodes) == 2
    load_data(tiny("mnist-ddpm", *source, f"data.cache={tmp_path / 'mine'}"))
    assert len(decodes) == 3 and len(list((tmp_path / "mine").iterdir())) == 1
    with pytest.raises(ConfigError, match="data.cache"):
        tiny("mnist-ddpm", *source, "data.cache=")


class _Rank(World):
    def __init__(self, rank: int, events: list):
        object.__setattr__(self, "events", events)
        super().__init__(rank=rank, size=2)

    def barrier(self):
        self.events.append((self.rank, "barrier"))


@pytest.mark.parametrize("rank,order", [(0, ["load", "barrier"]), (1, ["barrier", "load"])])
def test_rank_zero_loads_first(rank, order):
    events = []
    world = _Rank(rank, events)
    assert main_first(world, lambda: events.append((rank, "load")) or 7) == 7
    assert [e for _, e in events] == order
    events.clear()
    with pytest.raises(RuntimeError), warnings.catch_warnings():
        main_first(world, lambda: (_ for _ in ()).throw(RuntimeError("bad folder")))
    assert [e for _, e in events] == ["barrier"]  # a failure still releases (or joins) the others
