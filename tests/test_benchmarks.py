"""The benchmarks (throughput, sampling, quality) and ``mtdiff check`` run end to end at toy sizes and write their
JSON and tables (the numbers mean nothing here)."""

import importlib
import json

import pytest


def _load(name: str):
    """The benchmark ``benchmarks.<name>`` (the package is importable from the repository root)."""
    return importlib.import_module(f"benchmarks.{name}")


def test_every_benchmark_is_a_command_of_the_benchmarks_package():
    """Each benchmark imports as ``benchmarks.NAME`` (its command: ``python -m benchmarks.NAME``), has a ``main``,
    and reaches its siblings through the package (a bare ``from common import`` works only with a path edit)."""
    import ast
    from pathlib import Path

    import benchmarks

    root = Path(benchmarks.__file__).parent
    siblings = {p.stem for p in root.glob("*.py")} | {"claims"}
    scripts = sorted(p for p in root.glob("*.py") if p.stem not in ("__init__", "common"))
    assert {"paper_claims", "quality", "throughput"} <= {p.stem for p in scripts}
    for path in [*scripts, *sorted((root / "claims").glob("*.py"))]:
        bare = [
            node.lineno
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom)
            and not node.level
            and node.module.split(".")[0] in siblings
            or isinstance(node, ast.Import)
            and any(a.name.split(".")[0] in siblings for a in node.names)
        ]
        assert not bare, f"{path.name}: imports a sibling by its bare name at lines {bare}"
    for path in scripts:
        assert callable(_load(path.stem).main), path.stem


def test_throughput_compares_mtdiff_with_diffusers_and_mt_with_single_task(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    tp = _load("throughput")
    monkeypatch.setitem(
        tp.SIZES,
        "toy",
        {
            "image_size": 16,
            "channels": 32,
            "channel_mult": (1, 2),
            "num_res_blocks": 1,
            "attention_resolutions": (8,),
            "batch": 2,
            "cpu_batch": 2,
        },
    )
    r = tp.main(
        [
            "--device",
            "cpu",
            "--sizes",
            "toy",
            "--mt-sizes",
            "toy",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert [c.get("error") for c in r["cases"]] == [None] * 4
    arms = {c["arm"]: c for c in r["cases"]}
    assert abs(arms["mtdiff"]["params"] / arms["diffusers"]["params"] - 1) < 0.01  # the same size, counted
    assert all(c["flops_per_step"] > 0 and c["img_per_s"] > 0 for c in r["cases"])
    assert set(r["ratios"]) == {
        "toy: mtdiff eager / diffusers eager",
        "toy: MT-Diffusion-X (mask head) / single-task, img/s",
    }
    assert json.loads((tmp_path / "throughput-cpu.json").read_text())["ratios"] == r["ratios"]
    assert "| toy | mtdiff | no | 2 |" in (tmp_path / "throughput-cpu.md").read_text()


def test_sampling_table_has_the_ratio_to_the_reference(tmp_path, monkeypatch):
    pytest.importorskip("ccexam")
    from conftest import tiny_run

    sampling = _load("sampling")
    monkeypatch.setattr(sampling, "REFERENCE", ("ddim", 6))  # the reference at the longest step count
    run = tiny_run(tmp_path / "run", "mnist-ddpm", labels=False, steps=1)
    argv = ["--run", str(run), "--num", "4", "--batch", "4", "--steps", "2,6", "--precisions", "bf16,fp32"]
    r = sampling.main([*argv, "--out-dir", str(tmp_path)])
    rows = {(row["sampler"], row["steps"], row["precision"]): row for row in r["rows"]}
    assert set(rows) == {(s, k, p) for s, k in (("ddim", 6), ("ddim", 2), ("dpm-solver", 2)) for p in ("fp32", "bf16")}
    assert r["rows"][0]["precision"] == "fp32" and rows[("ddim", 6, "fp32")]["fid_ratio"] == 1.0
    assert rows[("ddim", 6, "bf16")]["fid_ratio"] != 1.0  # bf16 samples differ from the reference's
    assert all(rows[(s, k, "fp32")]["speed_vs_fp32"] == 1.0 for s, k, _ in rows)
    md = (tmp_path / "sampling.md").read_text()
    assert "FID / reference" in md and "speed / fp32" in md and "| bf16 |" in md


def test_quality_scores_mtdiff_and_the_diffusers_peer_of_the_same_size(tmp_path):
    """benchmarks/quality.py end to end at a smoke size: two mtdiff arms (one with its own steps), the three
    diffusers peers within 5% of the first arm's parameters, a curve point per arm, the JSON, the table and
    the curve plot."""
    pytest.importorskip("diffusers")
    pytest.importorskip("ccexam")
    pytest.importorskip("mnist")
    quality = _load("quality")
    r = quality.main(
        [
            "--steps",
            "3",
            "--arm",
            "own=mnist-ddpm:train.steps=2",
            "--num",
            "20",
            "--curve",
            "1",
            "--curve-num",
            "10",
            "--sample-steps",
            "2",
            "--train-limit",
            "256",
            "--calibrate",
            "1",
            "--runs",
            str(tmp_path / "runs"),
            "--out-dir",
            str(tmp_path),
            "--tag",
            "smoke",
            "--quiet",
        ]
    )
    names = [a["name"] for a in r["arms"]]
    assert names == ["demo", "own", "diffusers-demo-recipe", "diffusers-mtdiff-recipe", "diffusers-example"]
    assert r["params_within_5pct"] and [a["steps"] for a in r["arms"][:3]] == [3, 2, 3]
    for a in r["arms"]:
        assert [c["n"] for c in a["curve"]] == [10, 20] and 0 <= a["final"]["recognised"] <= 1
    assert r["arms"][2]["fid_ratio_to_peer"] == 1.0
    assert r["reference"]["recognised"] > 0.9  # real digits are recognised: the classifiers work
    if importlib.util.find_spec("digit_recognizer"):
        assert r["reference"]["recognised_strict"] > 0.8 and "recognised_both" in r["arms"][0]["final"]
    assert json.loads((tmp_path / "quality-smoke.json").read_text())["num"] == 20
    assert "| diffusers-example |" in (tmp_path / "quality-smoke.md").read_text()
    assert (tmp_path / "quality-smoke-curve.png").stat().st_size > 0


@pytest.mark.parametrize(
    "name,key,peak",
    [
        ("NVIDIA L40", "L40", 181.05e12),
        ("NVIDIA L4", "L4", 121.0e12),
        ("NVIDIA L40S", "L40S", 362.05e12),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.0e12),
        ("NVIDIA H100 80GB HBM3", "H100", 989.4e12),
        ("NVIDIA A100-SXM4-80GB", "A100", 312.0e12),
        ("NVIDIA B300", None, None),
    ],
)
@pytest.mark.parametrize("reverse", [False, True])
def test_throughput_peak_matches_the_longest_whole_word_gpu_name(monkeypatch, name, key, peak, reverse):
    """Whole words, longest key first, whatever the table's order: an L40 is not an L4."""
    tp = _load("throughput")
    if reverse:
        monkeypatch.setattr(tp, "GPU_PEAK_BF16", dict(reversed(tp.GPU_PEAK_BF16.items())))
    monkeypatch.setattr(tp.torch.cuda, "get_device_name", lambda device=None: name)
    got, label = tp.peak_flops("cuda")
    assert got == peak
    assert label.startswith(f"{key} dense bf16") if key else "unknown GPU" in label, label


def test_gpu_check_smoke_runs_every_section_on_the_cpu(tmp_path):
    """``mtdiff check`` as CI runs it (--device cpu --smoke), so that it cannot rot: every section reports, none
    fails, and the JSON summary is written."""
    from mtdiff.cli.check import main as check

    r = check(["--device", "cpu", "--smoke", "--out", str(tmp_path)])
    names = [s["name"] for s in r["sections"]]
    assert names == [
        "kinds",
        "sync_debug",
        "memory",
        "resume",
        "resume_deterministic",
        "fp16",
        "channels_last",
        "sdpa",
        "nccl",
        "torchrun",
        "compile",
        "cli",
        "throughput",
    ]
    status = {s["name"]: s["status"] for s in r["sections"]}
    failed = {n for n, st in status.items() if st == "FAIL"}
    assert not failed, {s["name"]: s["reason"] for s in r["sections"] if s["status"] == "FAIL"}
    assert all(s["reason"] for s in r["sections"])  # every PASS, FAIL and SKIP says why
    # what a CPU cannot do is skipped; the rest runs here
    assert status["sync_debug"] == "SKIP" and status["compile"] == "SKIP" and status["torchrun"] == "SKIP"
    assert "needs 2 GPUs" in next(s["reason"] for s in r["sections"] if s["name"] == "torchrun")
    for name in ("kinds", "resume", "resume_deterministic", "fp16", "channels_last", "sdpa", "nccl", "cli"):
        assert status[name] == "PASS", name
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["name"] for s in saved["sections"]] == names and saved["machine"]["device"] == "cpu"
    assert saved["failed"] == sorted(failed, key=names.index)


def test_presets_trains_each_preset_then_reuses_it_and_refuses_another_presets_run(tmp_path):
    """benchmarks/presets.py at a smoke size: two presets trained and scored; run again, both are reused (not
    retrained) and score the same; a run offered with --reuse is scored with its own steps; a run of one preset
    offered as another's is refused, naming the keys."""
    pytest.importorskip("ccexam")
    pytest.importorskip("mnist")
    presets = _load("presets")
    argv = ["--presets", "mnist-ddpm,mnist-label-m", "--set", "train.steps=2", "--num", "8", "--sample-steps", "2"]
    argv += ["--runs", str(tmp_path / "runs"), "--out-dir", str(tmp_path), "--tag", "smoke", "--quiet"]
    first = presets.main(argv)
    assert [(p["preset"], p["status"], p["steps"]) for p in first["presets"]] == [
        ("mnist-ddpm", "trained", 2),
        ("mnist-label-m", "trained", 2),
    ]
    assert all(p["scores"]["n"] == 8 and 0 <= p["scores"]["recognised"] <= 1 for p in first["presets"])
    assert first["reference"]["recognised"] > 0.9  # the classifier reads real digits
    again = presets.main(argv)
    assert [p["status"] for p in again["presets"]] == ["reused", "reused"]
    assert [p["scores"]["FID"] for p in again["presets"]] == [p["scores"]["FID"] for p in first["presets"]]
    assert "| mnist-label-m | 2 x 32 |" in (tmp_path / "presets-smoke.md").read_text()
    assert (tmp_path / "presets-smoke.png").stat().st_size > 0
    longer = presets.main(  # the preset trained for other steps elsewhere: scored with its own steps
        ["--presets", "mnist-ddpm", "--reuse", f"mnist-ddpm={tmp_path / 'runs' / 'mnist-ddpm'}", *argv[4:]]
    )
    assert [(p["status"], p["steps"], p["preset_steps"]) for p in longer["presets"]] == [("reused", 2, 3000)]
    assert "| mnist-ddpm | 2 x 32 (preset: 3000) |" in (tmp_path / "presets-smoke.md").read_text()
    stale = ["--presets", "mnist-label-e", "--reuse", f"mnist-label-e={tmp_path / 'runs' / 'mnist-label-m'}"]
    with pytest.raises(SystemExit, match="differs in .*modalities.label.head"):
        presets.main([*stale, "--set", "train.steps=2", "--num", "8", "--runs", str(tmp_path / "runs"), "--quiet"])


def test_omni_samplers_scores_each_sampler_and_eps_with_and_without_the_label(tmp_path, monkeypatch):
    pytest.importorskip("ccexam")
    from conftest import tiny_run

    omni = _load("omni")
    arms = {"ancestral, 6 steps": {"sampler": "ancestral", "steps": 6}, "DPM, 3": {"sampler": "dpm-solver", "steps": 3}}
    monkeypatch.setattr(omni, "SAMPLER_ARMS", arms)
    run = tiny_run(tmp_path / "run", "mnist-label-m", "model.encoded_flags=true", steps=1)
    r = omni.main(["samplers", "--runs", str(run), "--num", "4", "--out-dir", str(tmp_path)])
    row = r["runs"][str(run)]
    assert row["encoded_flags"] is True and row["step"] == 1
    assert row["eps_mse_label"] != row["eps_mse_nothing"]  # the label's encoding is in z_t in one case only
    assert all(0 <= row[a]["class_asked"] <= 1 and 0 <= row[a]["recognised"] <= 1 for a in arms)
    assert all(0 < row[a]["background"] <= 1 for a in arms) and 0.05 < r["test_background"] < 0.4  # MNIST's ink
    md = (tmp_path / "omni-samplers.md").read_text()
    assert "| encoded flags |" in md and "DPM, 3: class asked / recognised / background" in md
    with pytest.raises(SystemExit, match="no modality mask"):
        omni.main(["samplers", "--runs", str(run), "--num", "4", "--hold", "mask", "--out-dir", str(tmp_path)])
