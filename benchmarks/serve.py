"""Latency of ``mtdiff serve``: seconds from the command to the page, and for 16 samples (DPM-Solver++, 20 steps)
asked through the app's API, against the goals (5 s and 3 s on 2 CPU cores with the default model).

    python -m benchmarks.serve [--run NAME_OR_DIR] [--starts 3] [--repeats 5] [--out benchmarks/results/serve]

``page_ready_s``: ``mtdiff serve --run RUN --port P`` started ``--starts`` times, each until the page answers
(HTTP 200 on /). ``generate16_s``: one warm-up, then ``--repeats`` requests of the ``/generate`` endpoint through
``gradio_client`` (the queue, the network and the PNGs included), and ``model_s`` the same call of
``run.generate`` in this process (the model alone). Medians count. The load average before and after is kept, as
other work on the machine slows both. Writes ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import date
from pathlib import Path

from benchmarks.common import RESULTS, machine, where_run

GOALS = {"page_ready_s": 5.0, "generate16_s": 3.0}
ROOT = Path(__file__).resolve().parents[1]


def page_ready(run: str, timeout: float = 300.0) -> float:
    """Seconds from starting ``mtdiff serve`` to its page answering; the server is stopped after."""
    from mtdiff.app import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "mtdiff.cli.main", "serve", "--run", run, "--port", str(port)]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"mtdiff serve exited {proc.returncode}: {proc.stderr.read()}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
                return time.perf_counter() - t0
            except OSError:
                if time.perf_counter() - t0 > timeout:
                    raise SystemExit("mtdiff serve did not answer") from None
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)


def generate_latency(run_name: str, repeats: int) -> tuple[list[float], list[float]]:
    """(seconds per /generate request of 16 samples through gradio_client, seconds per run.generate)."""
    from gradio_client import Client

    import mtdiff
    from mtdiff.app import free_port, launch

    run = mtdiff.load_run(run_name)
    port = free_port()
    demo = launch(run, "127.0.0.1", port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}", verbose=False)
        args = (16, 0, "dpm-solver", 20, 0, "generated", "", None, "1", None)
        app, model = [], []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            images = client.predict(*args[:1], i, *args[2:], api_name="/generate")[0]
            if len(images) != 16:
                raise SystemExit(f"/generate gave {len(images)} images, not 16")
            t1 = time.perf_counter()
            run.generate({}, 16, seed=i, sampler="dpm-solver", steps=20)
            t2 = time.perf_counter()
            if i:  # the first of each is a warm-up
                app.append(t1 - t0)
                model.append(t2 - t1)
        return app, model
    finally:
        demo.close()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="run directory or shipped name (default: mtdiff serve's)")
    ap.add_argument("--starts", type=int, default=3, help="times the command is started (default 3)")
    ap.add_argument("--repeats", type=int, default=5, help="timed /generate requests (default 5)")
    ap.add_argument("--out", type=Path, default=RESULTS / "serve", help="path without extension")
    args = ap.parse_args(argv)
    from mtdiff.app import default_run, require_gradio

    require_gradio()
    run = args.run or default_run()
    load_before = os.getloadavg()[0]
    ready = [page_ready(run) for _ in range(args.starts)]
    app, model = generate_latency(run, args.repeats)
    med = {"page_ready_s": statistics.median(ready), "generate16_s": statistics.median(app)}
    result = {
        "benchmark": "serve",
        "command": " ".join(["python -m benchmarks.serve", *(argv if argv is not None else sys.argv[1:])]),
        "date": date.today().isoformat(),
        "machine": machine("cpu"),
        "run": run,
        "setting": "16 samples, DPM-Solver++ (dpm-solver), 20 steps, one request at a time",
        "page_ready_s": ready,
        "generate16_s": app,
        "model_s": model,
        "median": {**med, "model_s": statistics.median(model)},
        "goals": GOALS,
        "met": {k: med[k] <= GOALS[k] for k in GOALS},
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    m = result["median"]
    args.out.with_suffix(".md").write_text(
        f"# mtdiff serve latency ({run})\n\n{where_run(result['machine'], result['date'])}; `{result['command']}`; "
        f"load average {load_before:.1f} before, {result['load_average_1min']['after']:.1f} after.\n\n"
        "| what | median | goal | all |\n|---|---|---|---|\n"
        f"| command to page ready | {m['page_ready_s']:.2f} s | {GOALS['page_ready_s']:.0f} s | "
        f"{', '.join(f'{x:.2f}' for x in ready)} |\n"
        f"| 16 samples through the app (DPM-Solver++, 20 steps) | {m['generate16_s']:.2f} s | "
        f"{GOALS['generate16_s']:.0f} s | {', '.join(f'{x:.2f}' for x in app)} |\n"
        f"| the same samples, run.generate alone | {m['model_s']:.2f} s | | {', '.join(f'{x:.2f}' for x in model)} |\n"
    )
    print(json.dumps({k: result[k] for k in ("median", "met", "load_average_1min")}))
    return result


if __name__ == "__main__":
    main()
