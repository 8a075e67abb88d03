"""Paired pix2pix folders: halves split exactly, the source reaches batches, bad files are named, and a
translation run trains and translates end to end (pixel space)."""

import json

import numpy as np
import pytest
import torch
from conftest import paired_folder, tiny
from PIL import Image

from mtdiff.cli.main import main
from mtdiff.config import ConfigError, load_config
from mtdiff.data import DataError, load_source
from mtdiff.data.loader import BatchStream
from mtdiff.data.paired import load_paired_folder
from mtdiff.train import Trainer


@pytest.fixture
def folder(tmp_path):
    return paired_folder(tmp_path / "pairs", splits=("train", "val"), n=4, size=16)


def _halves(path):
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"))
    h = a.shape[0]
    return torch.from_numpy(a[:, :h].transpose(2, 0, 1).copy()), torch.from_numpy(a[:, h:].transpose(2, 0, 1).copy())


@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])
def test_halves_are_source_and_target_exactly(folder, direction):
    data = load_paired_folder(folder, "train", image_size=16, direction=direction)
    assert data.images.shape == data.extras["source"].shape == (4, 3, 16, 16) and data.labels is None
    for i, path in enumerate(sorted((folder / "train").iterdir())):
        a, b = _halves(path)
        source, target = (a, b) if direction == "AtoB" else (b, a)
        assert torch.equal(data.images[i], target) and torch.equal(data.extras["source"][i], source)


def test_resize_and_greyscale(folder):
    data = load_paired_folder(folder, "train", image_size=8, channels=1)
    assert data.images.shape == data.extras["source"].shape == (4, 1, 8, 8)


def test_batches_carry_the_aligned_source(folder):
    data = load_paired_folder(folder, "train", image_size=16)
    batch = BatchStream(data, 2, seed=0).next()
    assert sorted(batch) == ["image", "source"]
    assert batch["source"].dtype == torch.float32 and batch["source"].abs().max() <= 1
    torch.testing.assert_close(batch["source"], -batch["image"])  # synthetic pairs: A = 255 - B


def test_test_split_falls_back_to_val(folder):
    assert len(load_source("paired", "test", root=folder, image_size=16)) == 4
    with pytest.raises(DataError, match="no train/ folder"):
        load_source("paired", "train", root=folder / "val", image_size=16)


def test_empty_split_and_missing_root_are_named(tmp_path):
    (tmp_path / "p" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train has no image files"):
        load_paired_folder(tmp_path / "p", "train", image_size=8)
    with pytest.raises(DataError, match="does not exist"):
        load_paired_folder(tmp_path / "nope", "train", image_size=8)


def test_bad_files_are_named_or_skipped_and_counted(folder):
    train = folder / "train"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(train / "square.png")  # not A|B
    (train / "trunc.png").write_bytes((train / "0.png").read_bytes()[:60])  # truncated
    with pytest.raises(DataError, match=r"square\.png.*twice as wide"):
        load_paired_folder(folder, "train", image_size=16)
    with pytest.warns(UserWarning, match=r"skipped 2 unusable paired image file\(s\) of 6") as w:
        data = load_paired_folder(folder, "train", image_size=16, on_bad="skip")
    assert len(data) == 4 and "trunc.png" in str(w[0].message)
    for p in train.glob("[0-9].png"):
        p.unlink()
    with pytest.raises(DataError, match="no usable paired images"), pytest.warns(UserWarning):
        load_paired_folder(folder, "train", image_size=16, on_bad="skip")


def test_config_needs_root_for_paired():
    with pytest.raises(ConfigError, match="data.source='paired' needs data.root"):
        load_config("fashion-edges2img", ["data.source=paired"])


def test_translation_run_trains_and_translates(tmp_path, capsys):
    """The source half is the -X input (modality kind image, source 'source'); translate reads it from the test
    split."""
    root = paired_folder(tmp_path / "pairs", splits=("train", "test"), n=8, size=32)
    cfg = tiny(
        "fashion-edges2img",
        "data.source=paired",
        f"data.root={root}",
        "data.channels=3",
        "modalities.edges.source=source",
        "train.steps=2",
        "train.ckpt_every=2",
        "train.sample_every=0",
        "train.batch_size=4",
    )
    metrics = Trainer(cfg, tmp_path / "run", progress=False).run()
    assert metrics["step"] == 2 and np.isfinite(metrics["loss"])
    out = tmp_path / "t.png"
    assert main(["translate", "--run", str(tmp_path / "run"), "--num", "2", "--steps", "2", "--out", str(out)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["modality"] == "edges" and scores["n"] == 2 and "generated_mse_to_ground_truth" in scores
    with Image.open(out) as im:  # (source, truth, generated) twice in one row of 32 px cells, scale 2
        assert im.size == (2 * (6 * 34 + 2), 2 * (34 + 2))
