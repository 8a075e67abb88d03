"""No user error ends in a traceback: each mistake found by trying the commands as a new user would is
refused with one line that says what was expected (exit 2), before any sampling or training."""

import importlib
import inspect
import json
import pkgutil

import numpy as np
import pytest
from conftest import tiny_run, toy_images
from PIL import Image

import mtdiff
from mtdiff.cli.main import main
from mtdiff.errors import MtdiffError


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("err-runs")
    data = toy_images(16)
    for name in ("mnist-masked-x", "mnist-label-m"):
        tiny_run(root / name, name, "sample.steps=2", data=data)
    return {"x": str(root / "mnist-masked-x"), "m": str(root / "mnist-label-m")}


CASES = [  # (argv with {x}/{m}/{out} for the runs and an output file, what the one-line message says)
    ("classify --run {m} --num 0", "--num: expected a whole number >= 1"),
    ("classify --run {m} --t 5000", "t must be a time index in [0, 999]"),
    ("classify --run {m} --t -5", "t must be a time index in [0, 999]"),
    ("report --run {x} --num 0", "--num: expected a whole number >= 1"),
    ("report --run {x} --steps -1", "--steps: expected a whole number >= 1"),
    ("sample --run {x} --steps 2000 --out {out}", "steps must be in [1, 1000]"),
    ("sample --run {x} --device cuda --out {out}", "sees no CUDA GPU"),
    ("sample --run {x} --device foo --out {out}", "unknown device 'foo'"),
    ("sample --run {x} --out bad/g", "needs an image file extension"),
    ("sample --run {x} --eta -1 --out {out}", "--eta: expected a finite number >= 0"),
    ("sample --run {x} --guidance 2 --out {out}", "guidance needs a run trained with train.cond_drop_prob > 0"),
    ("sample --run {x} --guidance 0 --out {out}", "--guidance: expected a finite number > 0"),
    ("sample --run {x} --prompt --out {out}", "expected one argument"),
    ("sample --run {x} --prompt seven --out {out}", "prompts needs a run with a text modality"),
    ("sample --run {m} --label 10 --out {out}", "class indices in [0, 10)"),
    ("sample --run {m} --label x --out {out}", "--label must be 'each' or a class index"),
    ("sample --run {m} --head-guidance 1 --out {out}", "head_guidance needs labels"),
    ("restore --run {x} --patches -1 --out {out}", "--patches: expected a whole number >= 1"),
    ("restore --run {x} --per-input 0 --out {out}", "--per-input: expected a whole number >= 1"),
    ("restore --run {m} --out {out}", "restore needs a run with a masked_image modality"),
    ("train --config mnist-demo --out {dir} --set train.lr=-1", "train.lr must be > 0"),
    ("train --config mnist-demo --out {dir} --set train.lr=.nan", "train.lr must be a finite number"),
    ("train --config mnist-demo --out {dir} --set model.dropout=1", "model.dropout must be in [0, 1)"),
    ("evaluate --run {x} --num 1", "--num must be >= 2"),
    ("evaluate --run {x} --features nope", "unknown image feature extractor 'nope'; choose one of"),
]


@pytest.mark.parametrize("line, expected", CASES, ids=[c[0].split(" {")[0] + " " + c[1][:30] for c in CASES])
def test_user_errors_end_in_one_line(runs, tmp_path, capsys, line, expected):
    argv = line.format(out=tmp_path / "o.png", dir=tmp_path / "run", **runs).split()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: usage line and reason
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_restore_of_one_input_without_keep_masks_it(runs, tmp_path, capsys):
    """Every input gets a mask (the first of a batch used to get none), and the masks follow --seed."""
    Image.fromarray(np.full((32, 32), 200, np.uint8)).save(tmp_path / "one.png")
    args = ["restore", "--run", runs["x"], "--input", str(tmp_path / "one.png"), "--per-input", "1"]
    fractions = []
    for seed in (0, 1):
        assert main([*args, "--seed", str(seed), "--out", str(tmp_path / f"{seed}.png")]) == 0
        stats = json.loads(capsys.readouterr().out)
        assert stats["masked_fraction"] > 0 and stats["psnr_db"] is not None
        fractions.append(stats["masked_fraction"])
    assert (tmp_path / "0.png").read_bytes() != (tmp_path / "1.png").read_bytes()


def test_every_error_class_is_an_mtdiff_error():
    """The CLI catches MtdiffError: every exception class mtdiff defines for users derives from it."""
    found = []
    for info in pkgutil.walk_packages(mtdiff.__path__, "mtdiff."):
        if info.name.startswith("mtdiff.cli") or info.name == "mtdiff.__main__":
            continue
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Exception) and cls.__module__ == info.name:
                found.append(cls)
                assert issubclass(cls, MtdiffError), f"{info.name}.{name} is not an MtdiffError"
    assert len(found) >= 8


def test_ctrl_c_in_a_command_exits_130_with_one_line(runs, tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mtdiff.runs.Run, "sample", interrupted)
    assert main(["sample", "--run", runs["x"], "--out", str(tmp_path / "o.png")]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "mtdiff sample: interrupted"


def test_presets_are_listed_with_their_whole_description(capsys):
    from mtdiff.config import presets

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name, path in presets().items():
        first_lines = [x.lstrip("# ").strip() for x in path.read_text().splitlines() if x.startswith("#")]
        last_word = first_lines[-1].split()[-1] if first_lines else ""
        assert name in out and last_word in out, name
