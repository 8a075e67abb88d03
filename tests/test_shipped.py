"""Shipped models (benchmarks/shipped.py and mtdiff.shipped): a tiny run exported to a folder is loaded by its
name, its checksum guards every file, a directory of the same name wins, an unknown name lists the shipped
ones, the card's command gives the run's config back, and the score command runs end to end."""

import importlib.util
import json
import shlex
import shutil

import pytest
import torch
from conftest import tiny_run
from safetensors.torch import load_file

from benchmarks import shipped as tool
from mtdiff import shipped
from mtdiff.checkpoint import CheckpointError, load_checkpoint
from mtdiff.config import load_config, to_dict
from mtdiff.errors import InputError
from mtdiff.runs import load_run, read_log, read_run_config

SETTINGS = ("sample.steps=4", "train.log_every=1")  # a short default sampler; a log line per step


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """{name: run directory} of three tiny runs (label, masked image, class mask) in runs/, each exported in
    float16 to weights/ (the tmp root is returned too)."""
    import mtdiff.train.trainer as trainer

    root = tmp_path_factory.mktemp("shipped")
    with pytest.MonkeyPatch.context() as mp:  # the memory estimate (advisory) is most of a tiny run's time
        mp.setattr(trainer, "estimate_training_memory", lambda _: None)
        runs = {
            "tiny-m": tiny_run(root / "runs" / "tiny-m", "mnist-label-m", *SETTINGS, steps=3),
            "tiny-x": tiny_run(root / "runs" / "tiny-x", "mnist-masked-x", *SETTINGS, steps=2),
            "tiny-seg": tiny_run(root / "runs" / "tiny-seg", "mnist-seg2img", *SETTINGS, steps=2),
        }
    for name, run_dir in runs.items():
        tool.export(run_dir, name, dtype="float16", dest=root / "weights")
    return root, runs


@pytest.fixture
def weights(made, monkeypatch):
    """The shipped models of ``made`` as the package's, with the tests in a directory of their own."""
    root, runs = made
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", root / "weights")
    return root / "weights", runs


def test_a_shipped_name_loads_samples_and_holds_the_ema_weights_in_float16(weights, tmp_path, monkeypatch):
    dest, runs = weights
    monkeypatch.chdir(tmp_path)
    assert shipped.shipped_names() == ["tiny-m", "tiny-seg", "tiny-x"]
    assert sorted(p.name for p in (dest / "tiny-m").iterdir()) == [
        "card.json",
        "config.yaml",
        "ema.safetensors",
        "log.jsonl",
    ]
    run = load_run("tiny-m")
    assert run.shipped and run.directory == dest / "tiny-m" and run.step == 3
    s = run.sample(2, seed=0)
    assert s.images.shape == (2, 1, 32, 32) and bool(torch.isfinite(s.images).all())

    ema = load_checkpoint(runs["tiny-m"])["ema"]
    params = {k for k, _ in run.model.named_parameters()}
    stored = load_file(str(dest / "tiny-m" / shipped.WEIGHTS_FILE))
    assert all((dest / "tiny-m" / f).stat().st_mode & 0o444 == 0o444 for f in shipped.FILES)  # readable by all
    loaded = run.model.state_dict()
    assert set(stored) == set(ema) == set(loaded)
    for k, v in ema.items():
        if k in params:
            assert stored[k].dtype == torch.float16
            assert torch.equal(loaded[k], v.half().float()), k
        else:  # buffers (here the fixed class encodings) are not rounded
            assert stored[k].dtype == v.dtype and torch.equal(loaded[k], v), k

    card = shipped.read_card(dest / "tiny-m")
    assert card["name"] == "tiny-m" and card["preset"] == "mnist-label-m" and card["step"] == 3
    assert card["dtype"] == "float16" and card["scores"] == {}
    assert card["parameters"] == sum(p.numel() for p in run.model.parameters())
    assert card["sha256"] == {f: shipped.sha256(dest / "tiny-m" / f) for f in shipped.FILES}
    assert card["log"]["entries"] == 2 and card["log"]["logged_entries"] == 4  # step 0 and the last of 0..3
    assert set(card["log"]["final"]) >= {"loss", "label"} and card["log"]["train_minutes"] > 0
    assert (dest / "tiny-m" / "config.yaml").read_text() == (runs["tiny-m"] / "config.yaml").read_text()


@pytest.mark.parametrize("corrupt", shipped.FILES)
def test_a_corrupt_byte_is_a_checksum_error_naming_the_file(weights, tmp_path, monkeypatch, capsys, corrupt):
    from mtdiff.cli.main import main

    dest, _ = weights
    copy = tmp_path / "weights"
    shutil.copytree(dest / "tiny-x", copy / "tiny-x")
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", copy)
    monkeypatch.chdir(tmp_path)
    path = copy / "tiny-x" / corrupt
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{corrupt} does not match its SHA-256"):  # before reading it
        load_run("tiny-x")
    if corrupt == shipped.WEIGHTS_FILE:
        code = main(["sample", "--run", "tiny-x", "--num", "2", "--steps", "2", "--out", str(tmp_path / "s.png")])
        err = capsys.readouterr().err
        assert code == 2 and str(path) in err and "SHA-256" in err and "reinstall mtdiff" in err
        assert not (tmp_path / "s.png").exists()


def test_a_directory_of_the_same_name_wins_over_the_shipped_one(weights, tmp_path, monkeypatch):
    dest, runs = weights
    monkeypatch.chdir(tmp_path)
    shutil.copytree(runs["tiny-m"], tmp_path / "tiny-m")
    run = load_run("tiny-m")
    assert not run.shipped and run.directory.resolve() == (tmp_path / "tiny-m").resolve()
    ema = load_checkpoint(runs["tiny-m"])["ema"]  # float32, not the shipped float16
    assert all(torch.equal(v, ema[k]) for k, v in run.model.state_dict().items())


def test_an_unknown_name_lists_the_shipped_ones(weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="shipped: tiny-m, tiny-seg, tiny-x"):
        load_run("tiny-nothing")


def test_the_cards_command_reproduces_the_runs_config(made):
    from mtdiff.cli.main import build_parser

    root, runs = made
    for name, run_dir in runs.items():
        command = shipped.read_card(root / "weights" / name)["command"]
        argv = shlex.split(command)
        assert argv[:2] == ["mtdiff", "train"]
        args = build_parser().parse_args(argv[1:])
        assert str(args.out) == f"runs/shipped/{name}" and args.config == load_config(args.config).name
        assert to_dict(load_config(args.config, args.overrides)) == to_dict(read_run_config(run_dir))
        assert "train.steps=" + ("3" if name == "tiny-m" else "2") in args.overrides
        assert "model.channel_mult=[1,2]" in args.overrides and "sample.steps=4" in args.overrides
        keys = [item.split("=", 1)[0] for item in args.overrides]
        assert len(keys) == len(set(keys)) and "model.variant" not in keys  # only the keys that differ


@pytest.mark.parametrize(
    "value",
    [
        "cpu",
        "true",
        "1e-05",
        "",
        "a handwritten digit {}",
        2e-3,
        1e-05,
        3,
        True,
        None,
        [1, 2, 4],
        ["the number {}", "{}, by hand"],
        [0.5, 1e-06],
    ],
)
def test_set_text_reads_back_as_the_value(value):
    from mtdiff.config import apply_overrides

    assert apply_overrides({}, [f"k={tool.set_text(value)}"]) == {"k": value}


def test_the_log_is_the_runs_own_history_thinned():
    log = [{"step": 0, "prior_kl": 1e-5}] + [
        {"step": s, "loss": 1.0 / s, "img_per_s": 100.0} for s in range(50, 1101, 50)
    ]
    log += [{"step": s, "loss": 2.0, "img_per_s": 50.0} for s in (1050, 1100, 1150)]  # resumed at 1000, log not cut
    kept = tool.history(log, step=1150)
    assert [e["step"] for e in kept] == [0, *range(50, 1151, 50)] and kept[-1]["loss"] == 2.0
    assert [e["step"] for e in tool.thin_log(kept)] == [0, 500, 1000, 1150]
    assert [e["step"] for e in tool.history(log, step=1000)] == [0, *range(50, 1001, 50)]
    minutes = tool.train_minutes(kept, batch=10)  # 1000 steps at 100 img/s, 150 at 50
    assert minutes == pytest.approx((1000 * 10 / 100 + 150 * 10 / 50) / 60)
    summary = tool.log_summary(kept, 10, 4)
    assert summary["final"] == {"loss": 2.0} and summary["entries"] == 4


def test_export_refuses_what_it_cannot_ship(made, tmp_path):
    root, runs = made
    with pytest.raises(tool.ExportError, match="no checkpoint"):
        (tmp_path / "empty").mkdir()
        shutil.copy(runs["tiny-m"] / "config.yaml", tmp_path / "empty" / "config.yaml")
        tool.export(tmp_path / "empty", "empty", dest=tmp_path / "w")
    with pytest.raises(tool.ExportError, match="not a preset"):
        tool.export(runs["tiny-m"], "x", dest=tmp_path / "w", preset="no-such-preset")
    assert read_log(runs["tiny-m"])  # the run itself is untouched

    # a run resumed with another schedule: its saved config does not give its history back
    assert tool.lr_mismatches(read_log(runs["tiny-m"]), read_run_config(runs["tiny-m"])) == []
    resumed = shutil.copytree(runs["tiny-m"], tmp_path / "resumed")
    log = read_log(resumed)
    log[1]["lr"] *= 2
    (resumed / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    with pytest.raises(tool.ExportError, match=r"learning rate logged at steps \[1\]"):
        tool.export(resumed, "resumed", dest=tmp_path / "w")
    card = shipped.read_card(tool.export(resumed, "resumed", dest=tmp_path / "w", force=True))
    assert "lr differs at steps [1]" in card["command_caveat"]


def test_write_scores_keeps_the_checksums(weights, tmp_path, monkeypatch):
    dest, _ = weights
    copy = tmp_path / "weights"
    shutil.copytree(dest / "tiny-m", copy / "tiny-m")
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", copy)
    tool.write_scores(copy / "tiny-m", {"head_accuracy": 0.5})
    assert shipped.verify(copy / "tiny-m")["scores"] == {"head_accuracy": 0.5}


@pytest.mark.skipif(importlib.util.find_spec("mnist") is None, reason="scoring reads the MNIST test split")
def test_score_runs_end_to_end_on_the_tiny_models(made, tmp_path, monkeypatch):
    root, runs = made
    copy = tmp_path / "weights"
    shutil.copytree(root / "weights", copy)
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", copy)
    monkeypatch.chdir(tmp_path)
    out, docs = tmp_path / "results", tmp_path / "docs"
    argv = ["score", "--num", "8", "--restore-num", "4", "--test-num", "64", "--speed-repeats", "1", "--threads", "1"]
    argv += ["--runs-dir", str(root / "runs"), "--out-dir", str(out), "--docs-dir", str(docs)]
    r = tool.main(argv)
    ccexam = importlib.util.find_spec("ccexam") is not None
    strict = ccexam and importlib.util.find_spec("digit_recognizer") is not None
    scores = {m["name"]: m["scores"] for m in r["models"]}
    assert list(scores) == ["tiny-m", "tiny-seg", "tiny-x"]
    for name, s in scores.items():
        assert shipped.verify(copy / name)["scores"] == json.loads(json.dumps(s))  # in the card, checksums intact
        assert s["num"] == 8 and s["sampler"] == "ancestral 4 steps" and s["load_sample_seconds"] > 0
        assert 0 <= s["half_vs_float32_mean_abs"] < 0.5  # the run it came from is in --runs-dir
        assert ("recognised" in s and "FID" in s and "float32_FID" in s) == ccexam
        assert ("recognised_strict" in s) == strict
        assert (docs / f"{name}.png").is_file()
    m = scores["tiny-m"]
    assert 0 <= m["head_accuracy"] <= 1 and m["head_test_digits"] == 64
    assert ("class_conditional" in m and "class_conditional_head_guided" in m) == ccexam
    assert [k for k in scores["tiny-x"] if k.startswith("masked_mse_")] == [f"masked_mse_{k}" for k in (5, 10, 15, 20)]
    assert 0 <= scores["tiny-seg"]["seg_class_iou_own_head"] <= 1 and ("seg_class_iou" in scores["tiny-seg"]) == ccexam
    assert "masked_mse_5" not in m and "head_accuracy" not in scores["tiny-x"]  # each is scored by what it does
    md = (out / "shipped.md").read_text()
    assert "python -m benchmarks.shipped score --num 8" in md and "| tiny-m | mnist-label-m | 3 |" in md
    assert "restoration, masked-pixel MSE, 20 patches" in md and "< 0.302" in md
    assert json.loads((out / "shipped.json").read_text())["models"][0]["name"] == "tiny-m"
    assert (out / "shipped.png").is_file() and (out / "shipped" / "tiny-m.png").is_file()


def test_models_lists_and_checks_every_shipped_model_and_presets_marks_them(weights, capsys):
    from mtdiff.cli.main import main

    assert main(["models", "--check"]) == 0
    out = capsys.readouterr().out
    for name in ("tiny-m", "tiny-seg", "tiny-x"):
        assert f"{name}  (preset " in out
    assert out.count("check: loaded and sampled 16 images (1, 32, 32)") == 3
    assert "trained by: mtdiff train --config mnist-label-m --out runs/shipped/tiny-m" in out
    assert main(["presets"]) == 0
    assert "[shipped weights" not in capsys.readouterr().out  # no preset has the name of a tiny model


def test_a_shipped_model_writes_its_report_under_runs_not_into_the_package(weights, tmp_path, monkeypatch):
    from mtdiff.report import write_report

    dest, _ = weights
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in (dest / "tiny-m").iterdir())
    path = write_report("tiny-m", num=2, steps=2)
    assert path.resolve() == (tmp_path / "runs" / "tiny-m" / "report.html").resolve()
    assert "tiny-m" in path.read_text() and sorted(p.name for p in (dest / "tiny-m").iterdir()) == before
