"""The paper's comparisons rerun at MNIST scale: Tables 1, 2, 4 and Figure 6 of Chen et al. (ICLR 2024).

    python -m benchmarks.paper_claims --scale smoke|cpu|converged|gpu [--seeds 0,1,2] [--tables ...] [--runs ...]

This file is the command; its parts are in ``benchmarks/claims/``: the paper's numbers, the arms and their
training, the time estimate, one scorer per table, and the verdicts and markdown.

Every arm has the same backbone, training steps, batch, learning rate and seed; every evaluation the same
sampler, steps and seed. Arms are trained with ``mtdiff.train.Trainer`` into ``RUNS/seed-<s>/<arm>`` and reused
when that directory holds a finished run of the same resolved config (a partial one is resumed), so an
interrupted benchmark continues where it stopped, arm by arm. Writes ``paper_claims.json`` and
``paper_claims.md`` (``paper_claims-SCALE.*`` for scales other than cpu: tables laid out like the paper's, its
numbers beside ours, and whether each claim holds) and, for scales with a curve, ``-curve.png``.

``--tables table4,figure6`` trains and evaluates only the arms of those tables, and ``--arms ddpm,masked-x`` only
those of their arms (the rows they make: Table 1's SDEdit and RePaint are the DDPM arm's). Results add up, row
by row: a run whose settings (all but the seeds) match the JSON already in ``--out-dir`` puts its rows and seeds
beside the ones there, so a scale too long for one sitting can be run table by table, seed by seed and arm by
arm, on different days and machines (each row's machine and day are kept in ``provenance``); a run of other
settings replaces the file. A row's mean ± sd is over the seeds that have it.

With several ``--seeds`` every arm is trained and evaluated once per seed (the seed of its initial weights,
data order, noise and of its evaluation); the tables show mean ± standard deviation over the seeds, and a
claim holds only when its difference points the paper's way and exceeds the spread of that difference
(the two sides' standard deviations added in quadrature); one the other way beyond the spread does not
hold; anything nearer is "within the spread". With one seed the spread is unknown and the verdict is the
direction alone, marked "1 seed".

Scales: ``smoke`` (8 channels, 3 steps, 16 samples: checks that the pipeline runs, numbers mean nothing),
``cpu`` (the MNIST presets' backbone, 16 channels x (1, 2, 4), 1000 steps at batch 32, 1000 samples with
25 DDIM steps) and ``gpu`` (64 channels, 20k steps, 5k samples, on CUDA). The cpu scale is sized for one
hour on 2 idle CPU cores: 9 arms x 1000 steps x 32 images at 120-150 img/s is 32-40 min of training (the
classifier-only M arm costs about half a step), and the evaluations are about 225k image forward passes
at 300-500 img/s, 8-12 min, plus about 2 min of scoring and loading. The estimate printed up front comes
from a few training steps of every arm and a sampling pass measured on the spot (``--estimate-only``
prints it and exits); on a busy machine ``--threads 1`` can be several times faster than two threads.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from benchmarks.claims.arms import (
    SCALES,
    TABLES,
    Scale,
    arm_config,
    arm_dir,
    arms_of,
    backbone_text,
    differing,
    objective_of,
    run_state,
    train_arm,
)
from benchmarks.claims.estimate import calibrate, estimate
from benchmarks.claims.paper import TITLES
from benchmarks.claims.report import claims, markdown, mean_and_sd
from benchmarks.claims.scores import (
    ROWS,
    convergence,
    figure6_classification,
    plot_convergence,
    table1_restoration,
    table2_generation,
    table4_translation,
)
from benchmarks.common import RESULTS, machine, seed_list, where_run
from mtdiff.build import load_data
from mtdiff.config import Config

# ---------------------------------------------------------------------------- main


def _table_list(text: str) -> tuple[str, ...]:
    tables = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in tables if t not in TABLES]
    if not tables or unknown:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(TABLES)}, got {text!r}")
    return tuple(t for t in TABLES if t in tables)


def _arm_list(text: str) -> tuple[str, ...]:
    arms = tuple(a.strip() for a in text.split(",") if a.strip())
    unknown = [a for a in arms if a not in arms_of(TABLES)]
    if not arms or unknown:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(arms_of(TABLES))}, got {text!r}")
    return arms


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=sorted(SCALES), required=True)
    ap.add_argument("--runs", type=Path, default=Path("runs/paper_claims"), help="one run directory per arm here")
    ap.add_argument("--out-dir", type=Path, default=RESULTS, help="where paper_claims.json and .md are written")
    ap.add_argument("--features", default="mnist-cnn", help="image feature extractor for FID and perceptual distance")
    ap.add_argument(
        "--lpips-weights",
        default=os.environ.get("MTDIFF_LPIPS_WEIGHTS"),
        help="torchvision AlexNet weights file: Table 1 in real LPIPS (default: a feature distance)",
    )
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the scale's)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: the scale's; 1 can be much faster when other jobs share the cores)",
    )
    ap.add_argument(
        "--seeds",
        type=seed_list,
        default=[0],
        metavar="S,...",
        help="train and evaluate every arm once per seed; tables show mean ± sd (default: 0)",
    )
    ap.add_argument(
        "--tables",
        type=_table_list,
        default=tuple(TABLES),
        metavar="T,...",
        help=f"train and evaluate only the arms of these tables ({', '.join(TABLES)}; default: all); results "
        "add to those already written with the same settings, so a long scale can be run table by table",
    )
    ap.add_argument(
        "--arms",
        type=_arm_list,
        default=None,
        metavar="A,...",
        help="train and evaluate only these of the tables' arms (default: all); their rows add to those already "
        "written, so a seed can be run arm by arm",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for every arm, e.g. --set train.steps=500",
    )
    ap.add_argument("--estimate-only", action="store_true", help="print the time estimate and exit")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def plan(args, scale: Scale, cfgs: dict[int, dict[str, Config]], train, test) -> tuple[dict, dict]:
    """Steps still to train per arm (over all seeds), speeds measured now, and the time estimate (printed first)."""
    remaining = {
        arm: sum(
            c[arm].train.steps - run_state(arm_dir(args.runs, s, arm), c[arm], objective_of(arm))
            for s, c in cfgs.items()
        )
        for arm in cfgs[args.seeds[0]]
    }
    first = cfgs[args.seeds[0]]
    reference = first.get("ddpm") or arm_config("ddpm", scale, args.seeds[0], args.overrides)  # sampling speed
    speed = calibrate({a: c for a, c in first.items() if remaining[a] > 0}, reference, train, scale.batch)
    guess = estimate(scale, remaining, speed, len(test), evaluations=len(cfgs), tables=args.tables)
    steps_per_s = {a: round(1 / v, 2) for a, v in speed["sec_per_step"].items()}
    steps = next(iter(first.values())).train.steps
    print(
        f"[paper_claims] scale {args.scale}, {', '.join(TITLES[t] for t in args.tables)}: {len(first)} arms x "
        f"{steps} steps x {len(cfgs)} seed(s), {sum(remaining.values())} still to train; measured now: "
        f"training steps/s {steps_per_s}, {1 / speed['sec_per_forward_image']:.0f} img/s per sampling step. "
        f"Estimate: {guess['training'] / 60:.1f} min training + {(guess['total'] - guess['training']) / 60:.1f} min "
        f"evaluation = {guess['total'] / 60:.1f} min",
        flush=True,
    )
    return speed, guess


def evaluate_all(args, scale: Scale, test, seed: int, extractor, lpips, arms: list[str]) -> tuple[dict, dict]:
    """The rows of ``arms`` in the chosen tables (and with a curve, the convergence of those arms) of one seed,
    evaluated with that seed, and the seconds each took."""
    runs, device = args.runs / f"seed-{seed}", scale.device
    tables = {
        "table2": lambda: table2_generation(runs, scale, test, extractor, seed, device, arms),
        "table1": lambda: table1_restoration(runs, scale, test, extractor, lpips, seed, device, arms),
        "table4": lambda: table4_translation(runs, scale, test, seed, device, arms),
        "figure6": lambda: figure6_classification(runs, scale, test, seed, device, arms),
    }
    tables = {t: fn for t, fn in tables.items() if t in args.tables and set(TABLES[t]) & set(arms)}
    if scale.curve:
        tables["curve"] = lambda: convergence(runs, scale, test, extractor, seed, device, args.tables, arms)
    result, seconds = {}, {}
    for key, fn in tables.items():
        t0 = time.perf_counter()
        result[key] = fn()
        seconds[key] = round(time.perf_counter() - t0, 1)
        print(f"[paper_claims] seed {seed}: {key} done in {seconds[key]:.0f} s", flush=True)
    return result, seconds


def _comparable(settings: dict) -> dict:
    """The settings two runs must share for their tables to be put together (all but the seeds), as JSON has them."""
    return json.loads(json.dumps({k: v for k, v in settings.items() if k != "seeds"}))


def earlier_results(path: Path, settings: dict) -> dict | None:
    """What an earlier run with the same settings wrote to ``path``, as ``per_seed`` / ``curve`` / ``provenance`` /
    ``arms`` (a file of the single-seed layout is read as its one seed, and a table's provenance in one line as
    that of each of its rows); None when there is none, and (said) when it was made with other settings: this
    run's results then replace it."""
    if not path.is_file():
        return None
    try:
        prev = json.loads(path.read_text())
        theirs = prev["settings"]
    except (ValueError, KeyError, TypeError):
        print(f"[paper_claims] {path} is not a paper_claims result; it is replaced", flush=True)
        return None
    diff = differing(_comparable(settings), _comparable(theirs))
    if diff:
        print(
            f"[paper_claims] {path} holds results of other settings ({', '.join(diff)}); they are replaced", flush=True
        )
        return None
    seed = str(theirs["seeds"][0])  # an old single-seed file: its one seed
    per_seed = prev.get("per_seed") or {seed: {t: prev[t] for t in TABLES if t in prev}}
    where = where_run(prev["machine"], prev.get("date"))
    provenance = prev.get("provenance") or {seed: {t: where for t in TABLES if t in prev}}
    return {
        "per_seed": per_seed,
        "curve": prev.get("curve") or {},
        "provenance": {
            s: {t: w if isinstance(w, dict) else dict.fromkeys(per_seed[s][t]["rows"], w) for t, w in by_table.items()}
            for s, by_table in provenance.items()
        },
        "arms": prev.get("arms") or {},
    }


def _merge_points(before: list[dict], now: list[dict]) -> list[dict]:
    """Curve points of one arm: per step, the metrics of both runs (this run's where both have one)."""
    at = {p["step"]: dict(p) for p in before}
    for p in now:
        at.setdefault(p["step"], {}).update(p)
    return [at[k] for k in sorted(at)]


def _merge_rows(table: str, before: dict | None, now: dict) -> dict:
    """One seed's ``table``: this run's rows over the earlier run's, the earlier run's other rows kept, in the
    table's order."""
    rows = {**(before or {}).get("rows", {}), **now["rows"]}
    return {**(before or {}), **now, "rows": {row: rows[row] for row in ROWS[table] if row in rows}}


def _over_seeds(table: str, per_seed: list[dict]) -> tuple[dict, dict | None, dict]:
    """``table`` over seeds (``per_seed``, in order): each row's mean and sd over the seeds that have it (sd None
    for a row of one seed; the table's sd None when none of its rows has two), the other entries as the latest
    seed has them, and the positions in ``per_seed`` of each row's seeds."""
    at = {row: [i for i, t in enumerate(per_seed) if row in t["rows"]] for row in ROWS[table]}
    at = {row: idx for row, idx in at.items() if idx}
    both = {row: mean_and_sd([per_seed[i]["rows"][row] for i in idx]) for row, idx in at.items()}
    sd = {row: spread for row, (_, spread) in both.items()}
    return (
        {**{k: v for t in per_seed for k, v in t.items() if k != "rows"}, "rows": {r: m for r, (m, _) in both.items()}},
        {"rows": sd} if any(v is not None for v in sd.values()) else None,
        at,
    )


def put_together(now: dict, before: dict | None) -> dict:
    """This run's per-seed rows, curves, provenance and arms over an earlier run's (``earlier_results``); then
    each row's mean and sd over the seeds that have it (sd None for one seed; a table's None when none of its
    rows has two, the whole None when no table has), the seeds per table and per row."""
    merged = {key: {} for key in ("per_seed", "curve", "provenance", "arms")}
    for part in (before or {}, now):
        for key, by_seed in part.items():
            if key == "arms":
                merged[key].update(by_seed)
                continue
            for seed, items in by_seed.items():
                into = merged[key].setdefault(seed, {})
                if key == "curve":  # per arm and step: this run's metrics over the earlier run's
                    items = {arm: _merge_points(into.get(arm, []), points) for arm, points in items.items()}
                elif key == "per_seed":  # per table and row: this run's rows over the earlier run's
                    items = {t: _merge_rows(t, into.get(t), table) for t, table in items.items()}
                elif key == "provenance":
                    items = {t: {**into.get(t, {}), **rows} for t, rows in items.items()}
                into.update(items)
    seeds = {
        t: sorted((s for s in merged["per_seed"] if t in merged["per_seed"][s]), key=int)
        for t in TABLES
        if any(t in tabs for tabs in merged["per_seed"].values())
    }
    tables, sd, row_seeds = {}, {}, {}
    for t, ss in seeds.items():
        tables[t], sd[t], at = _over_seeds(t, [merged["per_seed"][s][t] for s in ss])
        row_seeds[t] = {row: [int(ss[i]) for i in idx] for row, idx in at.items()}
    return {
        **merged,
        "tables": tables,
        "sd": sd if any(v is not None for v in sd.values()) else None,
        "seeds": {t: [int(s) for s in ss] for t, ss in seeds.items()},
        "row_seeds": row_seeds,
    }


def main(argv: list[str] | None = None) -> dict:
    from mtdiff.pretrained.images import load_image_features
    from mtdiff.pretrained.lpips import load_lpips

    args = parse_args(argv)
    t_start = time.perf_counter()
    scale = SCALES[args.scale]
    if args.device:
        scale = replace(scale, device=args.device, overrides=(*scale.overrides, f"train.device={args.device}"))
    if args.threads or scale.threads:
        torch.set_num_threads(args.threads or scale.threads)
    arms = arms_of(args.tables)
    if args.arms:
        if not set(args.arms) <= set(arms):
            sys.exit(
                f"paper_claims: --arms {','.join(args.arms)}: {', '.join(sorted(set(args.arms) - set(arms)))} "
                f"not in the arms of {', '.join(args.tables)} ({', '.join(arms)})"
            )
        arms = [a for a in arms if a in args.arms]
    cfgs = {seed: {arm: arm_config(arm, scale, seed, args.overrides) for arm in arms} for seed in args.seeds}
    c = cfgs[args.seeds[0]][arms[0]]
    train, test = load_data(c, "train"), load_data(c, "test")
    speed, guess = plan(args, scale, cfgs, train, test)
    if args.estimate_only:
        return {"estimate_seconds": guess, "speed_measured": speed}

    t0 = time.perf_counter()
    progress = not args.quiet and sys.stdout.isatty()
    trained = {
        f"seed-{seed}/{arm}": train_arm(arm, cfg, arm_dir(args.runs, seed, arm), train, progress=progress)
        for seed, by_arm in cfgs.items()
        for arm, cfg in by_arm.items()
    }
    seconds = {"training": round(time.perf_counter() - t0, 1)}
    extractor = load_image_features(args.features, scale.device)
    lpips = load_lpips("alex", args.lpips_weights).to(scale.device) if args.lpips_weights else None
    per_seed = {}
    for seed in args.seeds:
        per_seed[str(seed)], taken = evaluate_all(args, scale, test, seed, extractor, lpips, arms)
        for key, v in taken.items():
            seconds[key] = round(seconds.get(key, 0.0) + v, 1)
    seconds["total"] = round(time.perf_counter() - t_start, 1)
    curves = {seed: t.pop("curve") for seed, t in per_seed.items() if "curve" in t}
    settings = {
        "backbone": backbone_text(c),
        "steps": c.train.steps,
        "batch_size": c.train.batch_size,
        "lr": c.train.lr,
        "seeds": args.seeds,
        "sampler": "ddim",
        "eta": 0.0,
        "sample_steps": scale.sample_steps,
        "features": args.features,
        "scale": asdict(scale),
        "overrides": args.overrides,
    }
    stem = args.out_dir / ("paper_claims" if args.scale == "cpu" else f"paper_claims-{args.scale}")
    mach, date = machine(scale.device), time.strftime("%Y-%m-%d")
    now = {
        "per_seed": per_seed,
        "curve": curves,
        "provenance": {
            seed: {t: dict.fromkeys(table["rows"], where_run(mach, date)) for t, table in tabs.items()}
            for seed, tabs in per_seed.items()
        },
        "arms": trained,
    }
    whole = put_together(now, earlier_results(stem.with_suffix(".json"), settings))
    settings["seeds"] = sorted({s for ss in whole["seeds"].values() for s in ss})
    result = {
        "benchmark": "paper_claims",
        "scale": args.scale,
        "machine": mach,
        "date": date,
        "command": shlex.join(["python", "-m", "benchmarks.paper_claims", *(sys.argv[1:] if argv is None else argv)]),
        "settings": settings,
        "estimate_seconds": guess,
        "speed_measured": speed,
        "seconds": seconds,  # of this run
        "arms": whole["arms"],
        **whole["tables"],  # the means over each table's seeds (one seed: its numbers)
        "sd": whole["sd"],  # their standard deviations (None for one seed)
        "seeds": whole["seeds"],  # per table
        "row_seeds": whole["row_seeds"],  # per table and row (a table run arm by arm may have fewer for some rows)
        "per_seed": whole["per_seed"],
        "curve": whole["curve"] or None,  # per seed: quality against steps of every arm
        "provenance": whole["provenance"],  # per seed, table and row: the machine and day it ran on
    }
    result["claims"] = claims(whole["tables"], whole["sd"])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    stem.with_suffix(".md").write_text(markdown(result))
    if whole["curve"]:
        plot_convergence(next(iter(whole["curve"].values())), stem.parent / f"{stem.name}-curve.png")
    print(markdown(result))
    print(f"[paper_claims] wrote {stem}.json and .md in {seconds['total']:.0f} s", flush=True)
    return result


if __name__ == "__main__":
    main()
