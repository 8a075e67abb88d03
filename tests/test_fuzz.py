"""Property-based (hypothesis): any config, override or command line either works or fails before
work with a ConfigError / usage message naming the problem: never a traceback a user would see."""

import dataclasses
import typing

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtdiff.build import build_model, build_process
from mtdiff.cli.main import main
from mtdiff.config import Config, ConfigError, apply_overrides, from_dict, presets, validate

PRESETS = sorted(presets())
CPU_PRESETS = [p for p in PRESETS if p.startswith(("mnist", "fashion"))]


def _paths(cls, prefix=""):
    """Every dotted key of the config dataclasses (modalities get one example name)."""
    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out += _paths(tp, key + ".")
        elif f.name == "modalities":
            from mtdiff.config import ModalityConfig

            out += _paths(ModalityConfig, key + ".masked.")
        else:
            out.append(key)
    return out


KEYS = _paths(Config)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 300),
    st.floats(-2, 2),
    st.just(float("nan")),
    st.just(float("inf")),
    st.sampled_from(["", "auto", "X", "bridge", "label", "ddim", "cuda:7", "nope", "[1, 2]", "{a: 1}"]),
    st.lists(st.integers(-1, 64), max_size=4),
)
mutation = st.one_of(
    st.tuples(st.sampled_from(KEYS), values),  # a real key, any value
    st.tuples(st.sampled_from(KEYS).map(lambda k: k + "x"), values),  # a misspelt key
    st.tuples(st.sampled_from(["model", "train", "data", "modalities", "sample"]), values),  # a section replaced
)


def _set(raw: dict, key: str, value) -> None:
    node = raw
    *parents, last = key.split(".")
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[last] = value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PRESETS), st.lists(mutation, min_size=1, max_size=3))
def test_any_config_is_built_or_refused_with_a_config_error(preset, mutations):
    raw = yaml.safe_load(presets()[preset].read_text())
    for key, value in mutations:
        _set(raw, key, value)
    try:
        cfg = validate(from_dict(Config, raw))
        with torch.device("meta"):  # any size builds instantly, allocating nothing
            build_model(cfg)
        build_process(cfg)
    except ConfigError as e:  # (the autoencoder's errors are ConfigErrors too)
        assert str(e)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="abcdemnoprstx._=[]{}:, 0123456789-", max_size=24), max_size=4))
def test_any_override_string_applies_or_is_refused_with_a_config_error(items):
    raw = yaml.safe_load(presets()["mnist-masked-x"].read_text())
    try:
        validate(from_dict(Config, apply_overrides(raw, items)))
    except ConfigError as e:
        assert str(e)


class WorkStarted(Exception):
    pass


COMMANDS = [
    "train",
    "sample",
    "translate",
    "classify",
    "restore",
    "evaluate",
    "report",
    "presets",
    "models",
    "generate",
    "demo",
    "frobnicate",
]
FLAGS = [
    "--given",
    "--config",
    "--out",
    "--set",
    "--resume",
    "--run",
    "--num",
    "--steps",
    "--sampler",
    "--eta",
    "--seed",
    "--device",
    "--label",
    "--prompt",
    "--guidance",
    "--head-guidance",
    "--input",
    "--t",
    "--method",
    "--mask",
    "--patches",
    "--per-input",
    "--features",
    "--weights",
    "--batch",
    "--ref-num",
    "--keep",
]
# each argument's edges: zero, negatives, past the schedule (T = 1000), non-numbers, unknown and absent devices,
# paths without an image extension, empty strings
ARGS = [
    "mnist-masked-x",
    "nope",
    "-1",
    "0",
    "3",
    "999",
    "1000",
    "5000",
    "1e9",
    "-0.5",
    "nan",
    "inf",
    "x=1",
    "train.steps=0",
    "train.lr=abc",
    "train.lr=-1",
    "model.channels=7",
    "cuda",
    "cuda:3",
    "foo",
    "each",
    "11",
    "ddim",
    "dpm-solver",
    "half",
    "elbo",
    "{}",
    "",
    "bad/g",
    "out.png",
    "out.txt",
]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A masked-image run and a label run, trained two steps: the commands check their arguments against them."""
    from conftest import tiny_run, toy_images

    root = tmp_path_factory.mktemp("fuzz-runs")
    data = toy_images(16)
    for name in ("mnist-masked-x", "mnist-label-m"):
        tiny_run(root / name, name, data=data)
    return [str(root / "mnist-masked-x"), str(root / "mnist-label-m"), str(root / "not-a-run")]


@pytest.fixture
def no_work(monkeypatch):
    """Stop at the first sign of real work: training steps, a sampler or a head run, a data set loaded.
    Everything a command checks comes before it, so every check runs for real."""
    import mtdiff.build
    import mtdiff.train.trainer as tr
    import mtdiff.trained

    def stop(*a, **k):
        raise WorkStarted

    monkeypatch.setattr(tr.Trainer, "__init__", stop)
    monkeypatch.setattr(mtdiff.build, "load_data", stop)
    for name in ("generate_given", "read_heads", "elbo_logits"):  # every sampler and head run of a Run
        monkeypatch.setattr(mtdiff.trained, name, stop)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(COMMANDS),
    st.lists(st.tuples(st.sampled_from(FLAGS), st.sampled_from(ARGS)), max_size=5),
    st.integers(0, 3),
)
def test_any_command_line_fails_cleanly_or_starts_work(tiny_runs, no_work, capsys, command, flags, run):
    argv = [command] + (["--run", tiny_runs[run]] if run < 3 else [])
    for flag, value in flags:
        argv += [flag, value]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: a usage line and the reason, exit code 2
        assert e.code in (0, 2)
        return
    except WorkStarted:
        return
    err = capsys.readouterr().err
    assert code in (0, 2) and (code == 0 or "error:" in err)
