"""Samplers, output spaces, loss weightings and timestep samplings are registries: every list of their names
(config choices, CLI choices, the checks of the run and the samplers) is the registry, and a new entry is a
new valid value everywhere with no other edit."""

import argparse
import dataclasses
import inspect
import re

import pytest
import torch
from conftest import tiny, tiny_run
from PIL import Image

from mtdiff.cli.main import build_parser, main
from mtdiff.config import ConfigError, DiffusionConfig, SampleConfig, registries
from mtdiff.errors import InputError
from mtdiff.loss import mt_loss
from mtdiff.process import PREDICTIONS, TIMESTEP_SAMPLINGS, WEIGHTINGS, Prediction
from mtdiff.process.prediction import Weighting
from mtdiff.runs import load_run
from mtdiff.sampling import SAMPLERS, Sampler, ddim, generate

CONFIG_KEYS = {
    "diffusion.prediction": PREDICTIONS,
    "diffusion.loss_weighting": WEIGHTINGS,
    "diffusion.timestep_sampling": TIMESTEP_SAMPLINGS,
    "sample.sampler": SAMPLERS,
}


def _sampler_choices(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Command -> the choices of its --sampler, for every command that has one."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: list(action.choices)
        for name, p in sub.choices.items()
        for action in p._actions
        if "--sampler" in action.option_strings
    }


def test_the_config_the_cli_and_the_registries_name_the_same_choices():
    assert registries() == CONFIG_KEYS  # the config checks these keys against these very registries
    for key, registry in CONFIG_KEYS.items():
        for name in registry:  # every entry is a valid value ...
            cfg = tiny("mnist-ddpm", f"{key}={name}")
            section, field = key.split(".")
            assert getattr(getattr(cfg, section), field) == name
        with pytest.raises(ConfigError, match=re.escape(f"{key}: 'nope' is not valid; choose one of {list(registry)}")):
            tiny("mnist-ddpm", f"{key}=nope")  # ... and nothing else is
    # the options an entry declares are config keys the user can set, and reach the code that runs it
    prediction_fields = {f.name for f in dataclasses.fields(Prediction)}
    for entry in [*WEIGHTINGS.values(), *TIMESTEP_SAMPLINGS.values()]:
        assert set(entry.options) <= {f.name for f in dataclasses.fields(DiffusionConfig)} & prediction_fields
    for entry in SAMPLERS.values():
        assert set(entry.options) <= {f.name for f in dataclasses.fields(SampleConfig)}
        assert set(entry.options) <= set(inspect.signature(generate).parameters)
    choices = _sampler_choices(build_parser())
    assert {"sample", "restore", "translate"} <= set(choices), choices  # the commands that sample
    assert all(c == list(SAMPLERS) for c in choices.values()), choices


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("runs") / "r", "mnist-ddpm", labels=False, steps=1)


def test_a_new_sampler_is_one_registry_entry(run_dir, tmp_path, monkeypatch, capsys):
    """A sampler registered in the test (DDIM under another name, with its eta option) is a valid
    ``sample.sampler``, a ``--sampler`` choice and a ``sampler=`` of the API; it gets the eta it was given, and
    samples what DDIM samples for the same seed."""
    calls = []

    def mine(model, process, init, steps, *, eta=0.0, **kw):
        calls.append(eta)
        return ddim(model, process, init, steps, eta=eta, **kw)

    monkeypatch.setitem(SAMPLERS, "mine", Sampler(mine, ("eta",)))
    assert tiny("mnist-ddpm", "sample.sampler=mine").sample.sampler == "mine"

    images = {}
    for name in ("mine", "ddim"):
        images[name] = tmp_path / f"{name}.png"
        cmd = ["sample", "--run", str(run_dir), "--num", "2", "--steps", "3", "--eta", "0.5", "--seed", "3"]
        assert main([*cmd, "--sampler", name, "--out", str(images[name])]) == 0, capsys.readouterr().err
    assert calls and set(calls) == {0.5}  # (the memory estimate samples too)
    calls.clear()
    assert Image.open(images["mine"]).tobytes() == Image.open(images["ddim"]).tobytes()

    run = load_run(run_dir)
    a = run.sample(2, sampler="mine", steps=3, eta=0.5, seed=1).images
    b = run.sample(2, sampler="ddim", steps=3, eta=0.5, seed=1).images
    assert calls == [0.5] and torch.equal(a, b)
    monkeypatch.delitem(SAMPLERS, "mine")
    with pytest.raises(InputError, match="sampler must be one of ancestral, ddim, dpm-solver, got 'mine'"):
        run.sample(2, sampler="mine", steps=3)


def test_a_sampler_without_an_option_is_not_given_it(monkeypatch, run_dir):
    """Options go to the samplers that declare them: no sampler name is special."""
    seen = []

    def plain(model, process, init, steps, **kw):
        seen.append(sorted(kw))
        return SAMPLERS["ancestral"](model, process, init, steps, **kw)

    monkeypatch.setitem(SAMPLERS, "plain", Sampler(plain))
    load_run(run_dir).sample(1, sampler="plain", steps=2, eta=0.7)
    assert seen == [["callback", "clip", "constraint", "generator"]]


def test_a_new_loss_weighting_is_one_registry_entry(monkeypatch):
    """A weighting registered in the test (the eps error counted twice) is a valid ``diffusion.loss_weighting``
    and makes the loss of every output space exactly twice its eps error: per sample, the weight in the space's
    own units times the space's error is 2 ||eps_hat - eps||^2."""
    from mtdiff.build import build_model, build_process

    monkeypatch.setitem(WEIGHTINGS, "twice", Weighting(lambda snr, pred: 2 * torch.ones_like(snr)))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 1, 32, 32, generator=g) * 2 - 1, torch.randn(4, 1, 32, 32, generator=g)
    t = torch.tensor([5, 200, 600, 999])
    for kind in PREDICTIONS:
        cfg = tiny("mnist-ddpm", f"diffusion.prediction={kind}", "diffusion.loss_weighting=twice")
        model = build_model(cfg)
        loss, terms = mt_loss(model, build_process(cfg), x0, {}, t=t, noise=noise, lam=0.0)
        assert float(loss.detach()) == pytest.approx(2 * float(terms["eps_mse"]), rel=1e-4), kind
