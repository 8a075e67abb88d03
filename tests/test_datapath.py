"""The data path of many processes: each takes only its rows of the global batch (prefetched or not, resumed
exactly), image folders decoded once in parallel by ``mtdiff prepare-data``, and a torchrun job that finds no
prepared cache stops at once."""

import pytest
import torch
from conftest import tiny

from mtdiff.data import BatchStream, DataError, ImageSet, load_source


def _set(n=40, seed=0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 1, 8, 8, generator=g) * 255).to(torch.uint8)
    extras = {
        "source": (torch.rand(n, 1, 8, 8, generator=g) * 255).to(torch.uint8),
        "vec": torch.randn(n, 3, generator=g),
    }
    return ImageSet(images, torch.randint(0, 10, (n,), generator=g), [str(k) for k in range(10)], "toy", extras)


@pytest.mark.parametrize("prefetch", [False, True])
def test_each_process_gets_its_rows_of_the_global_batch(prefetch):
    """4 processes x 3 rows of a global batch of 12, over two epochs: each process's rows equal those rows of
    the one-process batch (images and image extras converted to [-1, 1]); labels and other extras whole."""
    data, whole = _set(), BatchStream(_set(), 12, seed=3)
    parts = [BatchStream(data, 12, seed=3, rows=slice(3 * r, 3 * r + 3), prefetch=prefetch) for r in range(4)]
    for _ in range(7):  # 40 // 12 = 3 batches an epoch
        full = whole.next()
        for r, part in enumerate(parts):
            mine, rows = part.next(), slice(3 * r, 3 * r + 3)
            assert mine.keys() == full.keys() and mine["image"].shape == full["image"].shape
            for key in ("image", "source"):
                assert torch.equal(mine[key][rows], full[key][rows]), key
            assert torch.equal(mine["label"], full["label"]) and torch.equal(mine["vec"], full["vec"])
    assert whole.epoch == 2 and parts[0].state_dict() == whole.state_dict()


def test_a_prefetching_stream_resumes_exactly():
    """The position saved is the batches handed out, not the one prefetched: a new stream loaded from it
    continues with the same batches."""
    a = BatchStream(_set(), 12, seed=1, prefetch=True)
    for _ in range(4):
        a.next()
    b = BatchStream(_set(), 12, seed=1, prefetch=True)
    b.load_state_dict(a.state_dict())
    for _ in range(4):
        assert torch.equal(a.next()["image"], b.next()["image"])


def test_the_former_path_gives_the_same_batches():
    """``per_rank=False`` (the data-path benchmark's "before") and the new path agree for one process."""
    old, new = BatchStream(_set(), 12, seed=2, per_rank=False), BatchStream(_set(), 12, seed=2)
    for _ in range(5):
        x, y = old.next(), new.next()
        assert all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture
def folder(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for i in range(12):
        (tmp_path / "f" / str(i % 3)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((torch.rand(20, 24, 3, generator=g) * 255).to(torch.uint8).numpy()).save(
            tmp_path / "f" / str(i % 3) / f"{i}.png"
        )
    return tmp_path / "f"


def test_parallel_decoding_gives_the_same_set_in_the_same_order(folder):
    from mtdiff.data.folder import load_image_folder

    one = load_image_folder(folder, image_size=16, workers=1)
    three = load_image_folder(folder, image_size=16, workers=3)
    assert torch.equal(one.images, three.images) and torch.equal(one.labels, three.labels)
    (folder / "1" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.png"):
        load_image_folder(folder, image_size=16, workers=3)


def test_prepare_data_fills_the_cache_that_a_prepared_load_maps(folder, tmp_path, capsys):
    """Before prepare-data a load that must only map the cache fails naming the folder and the command;
    after it, it maps the same images; a config without a cache or a folder says so in one line."""
    from mtdiff.cli.main import main

    kw = {"root": folder, "image_size": 16, "channels": 3, "on_bad": "error", "cache": tmp_path / "cache"}
    with pytest.raises(DataError, match=r"not in the data cache .*mtdiff prepare-data"):
        load_source("folder", "train", prepared=True, **kw)
    sets = ["--set=data.source=folder", f"--set=data.root={folder}", "--set=data.image_size=16"]
    sets += ["--set=data.channels=3", f"--set=data.cache={tmp_path / 'cache'}"]
    assert main(["prepare-data", "--config", "mnist-ddpm", *sets, "--workers", "2"]) == 0
    assert "12 images" in capsys.readouterr().out
    mapped = load_source("folder", "train", prepared=True, **kw)
    assert torch.equal(mapped.images, load_source("folder", "train", image_size=16, root=folder).images)
    assert main(["prepare-data", "--config", "mnist-ddpm", *sets, "--set=data.cache=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.cache is false" in err[0]
    assert main(["prepare-data", "--config", "mnist-ddpm"]) == 0
    assert "nothing to prepare" in capsys.readouterr().out


def test_the_backbone_encoder_runs_outside_the_compiled_training_graph():
    """With train.compile the backbone's call is the compiled training graph; the encoder pass (z = 0,
    t = 0, another batch size) must not go through it, or it compiles the whole backbone again."""
    from mtdiff.build import build_model

    model = build_model(tiny("mnist-masked-x", "modalities.label.kind=label", "modalities.label.encoder=backbone"))
    calls = []
    model.backbone._compiled_call_impl = lambda *a, **k: calls.append(1) or model.backbone._call_impl(*a, **k)
    model.encode({"label": torch.tensor([1, 2])})
    assert calls == []
    cond = torch.zeros(2, model.backbone.cond_channels, *model.z_shape[1:])
    model.backbone(torch.zeros(2, *model.z_shape), torch.zeros(2, dtype=torch.long), cond=cond)  # the hook works
    assert calls == [1]


def test_the_data_path_benchmark_compares_both_paths_in_one_run(tmp_path):
    from benchmarks.datapath import main

    r = main(["--images", "64", "--batch", "16", "--ranks", "4", "--steps", "2", "--warmup", "1", "--repeats", "1",
              "--out", str(tmp_path / "dp")])  # fmt: skip
    assert r["setting"]["rows_per_rank"] == 4 and set(r["host_ms_per_step"]) == {"before", "after"}
    assert r["ratio_before_over_after"] > 0 and r["machine"]["cpu_count"]
    assert (tmp_path / "dp.json").is_file() and "before / after" in (tmp_path / "dp.md").read_text()
