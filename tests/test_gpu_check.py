"""benchmarks/gpu_check.py runs on the CPU as CI runs it (--device cpu --smoke), so that it cannot rot:
every section reports, none fails, and the JSON summary is written."""
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "benchmarks"

def _load(name: str):
    if name not in sys.modules:
        sys.path.insert(0, str(ROOT))
        spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def test_gpu_check_smoke_runs_every_section_on_the_cpu(tmp_path):
    gpu_check = _load("gpu_check")
    r = gpu_check.main(["--device", "cpu", "--smoke", "--out", str(tmp_path)])
    names = [s["name"] for s in r["sections"]]
    assert names == ["kinds", "sync_debug", "memory", "resume", "resume_deterministic", "fp16", "channels_last", "sdpa",
                     "nccl", "compile", "cli", "throughput"]
    status = {s["name"]: s["status"] for s in r["sections"]}
    failed = {n for n, st in status.items() if st == "FAIL"}
    assert not failed, {s["name"]: s["reason"] for s in r["sections"] if s["status"] == "FAIL"}
    assert all(s["reason"] for s in r["sections"])                     # every PASS, FAIL and SKIP says why
    # what a CPU cannot do is skipped; the rest runs here
    assert status["sync_debug"] == "SKIP" and status["compile"] == "SKIP"
    for name in ("kinds", "resume", "resume_deterministic", "fp16", "channels_last", "sdpa", "nccl", "cli"):
        assert status[name] == "PASS", name
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["name"] for s in saved["sections"]] == names and saved["machine"]["device"] == "cpu"
    assert saved["failed"] == sorted(failed, key=names.index)
