"""The mtdiff command end to end on a tiny run: sample and restore write PNGs; errors are clear."""

import json

import pytest
from conftest import tiny_run
from PIL import Image

from mtdiff.cli.main import main
from mtdiff.data import ImageSet


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("runs") / "x", "mnist-masked-x")


def test_sample_writes_a_grid(run_dir, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", "--run", str(run_dir), "--num", "4", "--steps", "3", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 64
    assert json.loads(capsys.readouterr().out)["step"] == 2


@pytest.mark.parametrize("mask", ["random", "half"])
def test_restore_keeps_known_pixels(run_dir, tmp_path, capsys, mask):
    out = tmp_path / "r.png"
    assert (
        main(["restore", "--run", str(run_dir), "--num", "2", "--steps", "3", "--mask", mask, "--out", str(out)]) == 0
    )
    stats = json.loads(capsys.readouterr().out)
    assert out.is_file() and stats["masked_fraction"] > 0 and stats["raw_drift_known_mean_abs"] >= 0
    assert stats["psnr_db"] > 0 and -1 <= stats["ssim"] <= 1 and stats["unmasked_region_mse_raw"] >= 0


def test_same_seed_same_images_and_precision_reaches_the_network(run_dir, tmp_path):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    for p, precision in ((a, "fp32"), (b, "fp32"), (c, "bf16")):
        cmd = ["sample", "--run", str(run_dir), "--num", "2", "--steps", "3", "--seed", "5", "--out", str(p)]
        assert main([*cmd, "--precision", precision]) == 0
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()


def test_missing_run_and_missing_checkpoint_are_clear(tmp_path, capsys):
    assert main(["sample", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 2
    assert "not an mtdiff run directory" in capsys.readouterr().err
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("name: x\n")
    assert main(["sample", "--run", str(tmp_path / "r"), "--out", str(tmp_path / "x.png")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_restore_needs_a_masked_image_run(tmp_path, capsys):
    run = tiny_run(tmp_path / "d", "mnist-ddpm", labels=False, steps=1)
    assert main(["restore", "--run", str(run), "--out", str(tmp_path / "x.png")]) == 2
    assert "restore needs a run with a masked_image modality" in capsys.readouterr().err


def test_presets_command_lists_presets(capsys):
    assert main(["presets"]) == 0
    assert "mnist-demo" in capsys.readouterr().out


@pytest.fixture(scope="module")
def label_run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("runs") / "m", "mnist-label-m")


def test_joint_and_class_conditional_samples_carry_labels(label_run, tmp_path, capsys):
    assert (
        main(["sample", "--run", str(label_run), "--num", "4", "--steps", "2", "--out", str(tmp_path / "j.png")]) == 0
    )
    joint = json.loads(capsys.readouterr().out)
    assert len(joint["labels"]) == 4 and all(0 <= y < 10 for y in joint["labels"])
    assert (
        main(
            [
                "sample",
                "--run",
                str(label_run),
                "--num",
                "4",
                "--steps",
                "2",
                "--label",
                "each",
                "--out",
                str(tmp_path / "c.png"),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["labels"] == [0, 1, 2, 3]
    assert main(["sample", "--run", str(label_run), "--label", "12", "--out", str(tmp_path / "x.png")]) == 2
    assert "[0, 10)" in capsys.readouterr().err


def test_classify_reports_accuracy_on_the_test_split(label_run, capsys):
    assert main(["classify", "--run", str(label_run), "--num", "50"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 50 and 0 <= result["accuracy"] <= 1 and result["head"] == "middle"
    assert 0 <= result["ece"] <= 1


def test_guidance_flags(run_dir, label_run, tmp_path, capsys):
    out = str(tmp_path / "g.png")
    assert main(["sample", "--run", str(run_dir), "--num", "2", "--steps", "2", "--guidance", "2", "--out", out]) == 2
    assert "guidance needs a run trained with train.cond_drop_prob > 0" in capsys.readouterr().err
    guided = tiny_run(tmp_path / "cfg", "mnist-masked-x", "train.cond_drop_prob=0.2", steps=1)
    assert main(["sample", "--run", str(guided), "--num", "2", "--steps", "2", "--guidance", "2", "--out", out]) == 0
    assert (
        main(
            [
                "sample",
                "--run",
                str(label_run),
                "--num",
                "2",
                "--steps",
                "2",
                "--label",
                "3",
                "--head-guidance",
                "1.5",
                "--out",
                out,
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["labels"] == [3, 3]
    assert main(["sample", "--run", str(label_run), "--head-guidance", "1", "--out", out]) == 2
    assert "head_guidance needs labels" in capsys.readouterr().err


def test_translate_mask_to_image_writes_triplets_and_table4_scores(tmp_path, capsys):
    from mtdiff.data import load_mnist

    test = load_mnist("test")
    data = ImageSet(test.images[:32], test.labels[:32], test.class_names, "mnist-head")
    tiny_run(tmp_path / "seg", "mnist-seg2img", data=data)
    out = tmp_path / "t.png"
    assert main(["translate", "--run", str(tmp_path / "seg"), "--num", "4", "--steps", "2", "--out", str(out)]) == 0
    scores = json.loads(capsys.readouterr().out)
    for key in ("inverse_image_to_mask/pixel_accuracy", "generated_by_own_head/class_iou"):
        assert 0 <= scores[key] <= 1
    assert out.is_file()
    guided = ["translate", "--run", str(tmp_path / "seg"), "--num", "2", "--steps", "2", "--guidance", "2"]
    assert main([*guided, "--out", str(out)]) == 0  # the preset trains with cond_drop_prob
    assert json.loads(capsys.readouterr().out)["n"] == 2
    # from files: a folder of class maps (pixel value = class index)
    import numpy as np

    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(2):
        arr = np.zeros((32, 32), np.uint8)
        arr[8:24, 12:20] = i + 1
        Image.fromarray(arr).save(masks / f"m{i}.png")
    args = ["translate", "--run", str(tmp_path / "seg"), "--steps", "2", "--input", str(masks), "--out", str(out)]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 2
    Image.fromarray(np.full((32, 32), 20, np.uint8)).save(masks / "m2.png")
    assert main(args) == 2
    assert "must be < 11; found 20" in capsys.readouterr().err
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(masks / "m2.png")
    assert main(args) == 2
    assert "expects a 32x32" in capsys.readouterr().err


def test_classify_by_elbo(label_run, capsys):
    assert main(["classify", "--run", str(label_run), "--num", "3", "--method", "elbo"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "elbo" and result["n"] == 3 and len(result["elbo_timesteps"]) == 10


def test_translate_edges_to_image_scores_the_edges_of_the_generated_images(tmp_path):
    """edges -> image (fashion-edges2img) on MNIST digits: the edges re-extracted from the generated
    images are scored against the input edges (binary per-pixel scores)."""
    from mtdiff.data import load_mnist
    from mtdiff.evaluate import translate
    from mtdiff.runs import load_run

    test = load_mnist("test")
    data = ImageSet(test.images[:32], test.labels[:32], test.class_names, "mnist-head")
    tiny_run(tmp_path / "edges", "fashion-edges2img", data=data)
    grid, scores = translate(load_run(tmp_path / "edges"), data, modality="edges", num=4, steps=2)
    assert grid.shape == (12, 1, 32, 32) and scores["columns"] == 3
    assert 0 <= scores["edges_of_generated/pixel_accuracy"] <= 1 and 0 <= scores["edges_of_generated/class_iou"] <= 1
