"""Training: exact resume in process (after SIGKILL: tests/test_reliability.py), NaN handling, the CLI failing
before work."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny

from mtdiff.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from mtdiff.data import ImageSet
from mtdiff.train import Trainer, TrainingError

FAST = [
    "train.log_every=2",
    "train.sample_every=0",
    "train.warmup_steps=3",
    "train.lr=1e-3",
    "train.batch_size=8",
    "sample.num=4",
    "sample.steps=3",
    "model.dropout=0.1",
]


@pytest.fixture(scope="module")
def toy_data():
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(64, 1, 32, 32, generator=g) * 255).to(torch.uint8)
    return ImageSet(images, torch.randint(0, 10, (64,), generator=g), [str(i) for i in range(10)], "toy")


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("preset", ["mnist-masked-x", "mnist-omni"])
def test_resume_in_process_is_bit_identical(tmp_path, toy_data, preset):
    if preset == "mnist-omni":
        pytest.importorskip("sentence_transformers")
    const = "train.lr_schedule=constant"  # the part run is shorter: a decaying lr would follow its length
    cfg = tiny(preset, *FAST, const, "train.steps=10", "train.ckpt_every=4")
    straight = Trainer(cfg, tmp_path / "a", data=toy_data, progress=False)
    straight.run()
    part = Trainer(
        tiny(preset, *FAST, const, "train.steps=6", "train.ckpt_every=4"),
        tmp_path / "b",
        data=toy_data,
        progress=False,
    )
    part.run()  # checkpoints at 4 and 6
    with open(tmp_path / "b" / "log.jsonl", "a") as f:  # what a run killed after its checkpoint had logged
        f.write('{"step": 7, "loss": 9.0}\n{"step": 8, "loss": 9.0}\n{"step": 9, "lo')
    resumed = Trainer(cfg, tmp_path / "b", data=toy_data, resume=True, progress=False)
    assert resumed.step == 6
    resumed.run()
    for k, v in _params(straight.model).items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    for k, v in straight.ema.state_dict().items():
        assert torch.equal(v, resumed.ema.state_dict()[k]), k
    logged = [[json.loads(x) for x in (tmp_path / r / "log.jsonl").read_text().splitlines()] for r in "ab"]
    assert [e["step"] for e in logged[1]] == [e["step"] for e in logged[0]]  # each step once, as straight
    assert all(e.get("loss") != 9.0 for e in logged[1])


def test_refuses_to_overwrite_and_to_resume_nothing(tmp_path, toy_data):
    cfg = tiny("mnist-masked-x", *FAST, "train.steps=2", "train.ckpt_every=2")
    Trainer(cfg, tmp_path / "r", data=toy_data, progress=False).run()
    with pytest.raises(ValueError, match="--resume"):
        Trainer(cfg, tmp_path / "r", data=toy_data, progress=False)
    with pytest.raises(ValueError, match="no checkpoint"):
        Trainer(cfg, tmp_path / "empty", data=toy_data, resume=True, progress=False)


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, toy_data):
    cfg = tiny("mnist-masked-x", *FAST, "train.steps=4", "train.ckpt_every=2")
    Trainer(cfg, tmp_path / "r", data=toy_data, progress=False).run()
    latest = latest_checkpoint(tmp_path / "r")
    with open(latest / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00garbage\x00")
    with pytest.warns(UserWarning, match="SHA-256"):
        ckpt = load_checkpoint(tmp_path / "r")
    assert ckpt["meta"]["step"] == 2
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(tmp_path / "r", fallback=False)


def test_nonfinite_loss_is_skipped_then_stops_with_a_checkpoint(tmp_path, toy_data, monkeypatch):
    """A non-finite loss changes nothing (weights, optimizer moments, EMA) and is counted on the
    device; max_nonfinite in a row stop the run at the next check with the last good weights saved."""
    import mtdiff.train.trainer as tr

    cfg = tiny(
        "mnist-masked-x", *FAST, "train.steps=50", "train.ckpt_every=100", "train.max_nonfinite=3", "train.log_every=1"
    )
    trainer = Trainer(cfg, tmp_path / "r", data=toy_data, progress=False)
    real = tr.mt_loss
    after = []  # after[k]: the state after step k

    def state():
        opt = [v.clone() for s in trainer.opt.state.values() for k, v in s.items() if k != "step"]
        return _snapshot(trainer.model) + _snapshot(trainer.ema.model) + opt

    def flaky(*a, **k):
        after.append(state())
        loss, terms = real(*a, **k)
        return (loss * float("nan"), terms) if len(after) == 2 or len(after) > 4 else (loss, terms)

    monkeypatch.setattr(tr, "mt_loss", flaky)
    with pytest.raises(TrainingError, match="NaN/Inf for 3 consecutive steps"):
        trainer.run()
    after.append(state())
    assert trainer.step == 7 and trainer.skipped == 4
    for good, skipped in [(1, 2), (4, 5), (4, 6), (4, 7)]:  # steps 2 and 5-7 were skipped
        for a, b in zip(after[good], after[skipped], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not all(torch.equal(a, b) for a, b in zip(after[1], after[3]))  # the good steps did train
    ckpt = load_checkpoint(tmp_path / "r")
    assert ckpt["meta"]["step"] == 7 and ckpt["meta"]["counters"]["skipped_nonfinite"] == 4
    torch.testing.assert_close(ckpt["model"], {k: v.cpu() for k, v in trainer.model.state_dict().items()})


def test_fp16_scales_the_loss_and_an_overflow_skips_the_step_and_halves_the_scale(tmp_path, toy_data, monkeypatch):
    """train.precision=fp16 (CPU autocast has it too): the backward runs on loss x scale and the gradients
    are unscaled before clipping; an overflowing step changes no weight, is counted, and halves the scale;
    the scale is checkpointed and resumed."""
    import mtdiff.train.trainer as tr

    cfg = tiny(
        "mnist-masked-x", *FAST, "train.precision=fp16", "train.steps=4", "train.ckpt_every=4", "train.log_every=1"
    )
    trainer = Trainer(cfg, tmp_path / "r", data=toy_data, progress=False)
    assert trainer.amp_dtype is torch.float16 and trainer.scaler.is_enabled()
    scale0, norms, after = trainer.scaler.get_scale(), [], []
    real_loss, real_unscale = tr.mt_loss, trainer.scaler.unscale_

    def flaky(*a, **k):
        after.append(_snapshot(trainer.model))
        loss, terms = real_loss(*a, **k)
        return (loss * float("inf"), terms) if len(after) == 2 else (loss, terms)

    def unscale(opt):  # the gradient norm before and after unscaling
        norm = lambda: torch.stack(
            [p.grad.float().norm() for p in trainer.model.parameters() if p.grad is not None]
        ).norm()  # noqa: E731
        before = norm()
        real_unscale(opt)
        norms.append((before, norm()))

    monkeypatch.setattr(tr, "mt_loss", flaky)
    monkeypatch.setattr(trainer.scaler, "unscale_", unscale)
    trainer.run()
    after.append(_snapshot(trainer.model))
    before, unscaled = norms[0]
    torch.testing.assert_close(before / unscaled, torch.tensor(scale0), rtol=1e-3, atol=0)  # backward saw loss x 65536
    for a, b in zip(after[1], after[2], strict=True):  # step 2 overflowed: nothing changed
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(after[2], after[3]))
    assert trainer.skipped == 1 and trainer.scaler.get_scale() == scale0 / 2
    ckpt = load_checkpoint(tmp_path / "r")
    resumed = Trainer(
        tiny("mnist-masked-x", *FAST, "train.precision=fp16", "train.steps=5"),
        tmp_path / "r",
        resume=True,
        data=toy_data,
        progress=False,
    )
    assert ckpt["meta"]["counters"]["skipped_nonfinite"] == 1 and resumed.scaler.get_scale() == scale0 / 2


def test_bf16_is_the_default_where_native_and_fp32_elsewhere(monkeypatch):
    """``train.precision: auto`` (the default, and every preset's) is bf16 autocast on a GPU and on a CPU
    with native bf16, fp32 on other CPUs; an explicit choice applies on any device."""
    from mtdiff import precision
    from mtdiff.config import TrainConfig, load_config, presets
    from mtdiff.train import autocast_dtype

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert TrainConfig().precision == "auto"
    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert autocast_dtype("auto", cuda) is torch.bfloat16
        assert autocast_dtype("auto", cpu) is (torch.bfloat16 if native else None)
    for device in (cuda, cpu):
        assert autocast_dtype("bf16", device) is torch.bfloat16 and autocast_dtype("fp16", device) is torch.float16
        assert autocast_dtype("fp32", device) is None
    for name in presets():
        assert autocast_dtype(load_config(name).train.precision, cuda) is torch.bfloat16, name


def _snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def test_cli_rejects_bad_config_before_any_work(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtdiff",
            "train",
            "--config",
            "mnist-masked-x",
            "--out",
            str(out),
            "--set",
            "train.lrr=1",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "unknown key 'train.lrr'" in r.stderr and "valid keys in train" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_log_has_prior_kl_and_loss_terms(tmp_path, toy_data):
    cfg = tiny("mnist-masked-x", *FAST, "train.steps=4", "train.ckpt_every=4")
    Trainer(cfg, tmp_path / "r", data=toy_data, progress=False).run()
    lines = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert "prior_kl" in lines[0] and lines[0]["prior_kl"] < 1e-3
    assert {"loss", "eps_mse", "masked", "grad_norm", "img_per_s"} <= set(lines[-1])
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert "variant: X" in saved


def test_dropping_encodings_and_inputs(tmp_path, toy_data):
    from mtdiff.train.trainer import _apply_drop

    cfg = tiny(
        "mnist-masked-x",
        *FAST,
        "train.steps=2",
        "train.ckpt_every=2",
        "modalities.label.kind=label",
        "train.enc_drop_prob=0.5",
        "train.cond_drop_prob=0.5",
    )
    trainer = Trainer(cfg, tmp_path / "r", data=toy_data, progress=False)
    data = {"label": torch.tensor([1, 2, 3, 4]), "masked": torch.ones(4, 1, 32, 32)}
    rows = slice(0, 4)
    assert trainer._drop_masks(4, 0.0, ("label",)) is None
    every = _apply_drop(trainer.model, data, trainer._drop_masks(4, 1.0, ("label",)), rows)
    torch.testing.assert_close(every["label"], torch.full((4, 10), 0.1))
    assert every["masked"] is data["masked"]  # not among the names: untouched
    some = _apply_drop(trainer.model, data, trainer._drop_masks(4, 0.5, ("label", "masked")), rows)
    # every sample is either kept whole or whole "nothing known"
    assert bool(((some["masked"] == 1).flatten(1).all(1) | (some["masked"] == 0).flatten(1).all(1)).all())
    trainer.run()  # trains with both kinds of dropout


def test_dropping_everything_at_once_is_on_top_of_each_drop(tmp_path, toy_data):
    """train.*_drop_all_prob drops every name of a row together: with each drop p and all-at-once q, a row loses
    all k names with probability q + (1 - q) p^k and exactly one of them with (1 - q) k p^(k-1) (1 - p)."""
    cfg = tiny("mnist-masked-x", *FAST, "modalities.label.kind=label", "train.cond_drop_all_prob=0.3")
    trainer = Trainer(cfg, tmp_path / "r", data=toy_data, progress=False)
    names = ("label", "masked")
    assert trainer._drop_masks(8, 0.0, names, 0.0) is None
    every = trainer._drop_masks(8, 0.0, names, 1.0)
    assert all(bool(d.all()) for d in every.values())
    n, p, q = 40000, 0.5, 0.3
    d = torch.stack(list(trainer._drop_masks(n, p, names, q).values()))  # [2, n]
    all_rate, one_rate = float(d.all(0).float().mean()), float((d.sum(0) == 1).float().mean())
    assert abs(all_rate - (q + (1 - q) * p**2)) < 0.015, all_rate
    assert abs(one_rate - (1 - q) * 2 * p * (1 - p)) < 0.015, one_rate
    only_all = torch.stack(list(trainer._drop_masks(n, 0.0, names, q).values()))
    assert torch.equal(only_all[0], only_all[1])  # together or not at all
    with pytest.raises(Exception, match="train.enc_drop_all_prob must be in"):
        tiny("mnist-masked-x", "train.enc_drop_all_prob=1.5")
    with pytest.raises(Exception, match="train.cond_drop_all_prob=0.2 drops backbone inputs"):
        tiny("mnist-label-m", "train.cond_drop_all_prob=0.2")


def test_compiled_backbone_trains_and_saves_plain_parameter_names(tmp_path, toy_data, monkeypatch):
    """train.compile compiles the backbone in place: checkpoints keep the eager model's names and load
    into an uncompiled model. (Dynamo's eager backend here: the same graph capture, no C++ build.)"""
    from mtdiff.runs import load_run

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, **{**kw, "backend": "eager"}))
    cfg = tiny("mnist-masked-x", *FAST, "train.steps=2", "train.ckpt_every=2", "train.compile=true")
    trainer = Trainer(cfg, tmp_path / "r", data=toy_data, progress=False)
    trainer.run()
    assert trainer.model.backbone._compiled_call_impl is not None
    assert not any("_orig_mod" in k for k in load_checkpoint(tmp_path / "r")["model"])
    assert load_run(tmp_path / "r").step == 2


def test_steps_for_minutes_divides_the_budget_by_the_timed_step(monkeypatch):
    """A training step made to take 40 ms: a 0.1-minute budget is at most 150 steps (the slow warm-up steps untimed),
    and the throwaway probe leaves no run directory behind."""
    import tempfile

    from conftest import toy_images

    from mtdiff.train import steps_for_minutes
    from mtdiff.train.trainer import Trainer as T

    calls = []
    monkeypatch.setattr(T, "train_step", lambda self: (calls.append(1), time.sleep(0.04 if len(calls) > 2 else 1.0)))
    before = set(Path(tempfile.gettempdir()).glob("mtdiff-probe-*"))
    steps, seconds = steps_for_minutes(tiny("mnist-ddpm"), 0.1, data=toy_images(labels=False), calibrate=5, warm=2)
    assert len(calls) == 7 and 0.04 <= seconds < 0.06
    assert 100 <= steps <= 150
    assert set(Path(tempfile.gettempdir()).glob("mtdiff-probe-*")) == before


def test_init_from_starts_at_another_runs_sampling_weights_and_new_heads_keep_theirs(tmp_path, toy_data):
    """train.init_from: the weights before the first step are the source's EMA weights wherever the names match; a
    head the source lacks keeps its fresh initialisation; the first log entry says so; the run is at step 0; a
    source of another shape or without checkpoints is a ConfigError naming train.init_from."""
    from mtdiff.config import ConfigError

    Trainer(tiny("mnist-ddpm", *FAST, "train.steps=3"), tmp_path / "src", data=toy_data, progress=False).run()
    source = load_checkpoint(tmp_path / "src")["ema"]
    cfg = tiny("mnist-label-m", *FAST, "train.steps=2", f"train.init_from={tmp_path / 'src'}")
    fresh = Trainer(tiny("mnist-label-m", *FAST, "train.steps=2"), tmp_path / "fresh", data=toy_data, progress=False)
    tuned = Trainer(cfg, tmp_path / "tuned", data=toy_data, progress=False)
    assert tuned.step == 0
    ours, init = tuned.model.state_dict(), fresh.model.state_dict()
    new = [k for k in ours if k not in source]
    assert new and all(k.startswith("modalities.") or "head" in k for k in new), new
    for k in ours:
        assert torch.equal(ours[k], source[k] if k in source else init[k]), k
    assert any(not torch.equal(source[k], init[k]) for k in source if k in init)  # it did load something
    assert all(torch.equal(v, ours[k]) for k, v in tuned.ema.state_dict().items())  # the EMA starts there too
    tuned.run()
    first = json.loads((tmp_path / "tuned" / "log.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["init_from"]["step"] == 3 and first["init_from"]["new"] == new
    wide = tiny("mnist-label-m", *FAST, "model.channels=16", f"train.init_from={tmp_path / 'src'}")
    with pytest.raises(ConfigError, match=r"train.init_from: .* another shape"):
        Trainer(wide, tmp_path / "wide", data=toy_data, progress=False)
    with pytest.raises(ConfigError, match=r"train.init_from: .*nothing.* holds no checkpoint"):
        Trainer(tiny("mnist-ddpm", *FAST, f"train.init_from={tmp_path / 'nothing'}"), tmp_path / "n", data=toy_data)
