"""Whether each of the paper's claims holds (over seeds: beyond the spread), and the tables in markdown."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from .arms import TABLES
from .paper import NAMES, PATCHES, SEG_METRICS, TABLE2_METRICS, TITLES


@dataclass(frozen=True)
class Side:
    """One side of a comparison: the mean over seeds and its standard deviation (None with one seed)."""

    mean: float
    sd: float | None = None

    def text(self, digits: int) -> str:
        return f"{self.mean:.{digits}f}" + (f" ± {self.sd:.{digits}f}" if self.sd is not None else "")


HOLDS, FAILS, WITHIN = "holds", "does not hold", "within the spread"


def verdict(a: Side, b: Side, *, lower: bool) -> str:
    """Whether ``a`` beats ``b`` (lower is better for distances; at least as high for scores): HOLDS when the
    difference points that way and exceeds its spread (the sds added in quadrature), FAILS when it points the
    other way beyond the spread, else WITHIN. With one seed (no sd) the direction alone decides."""
    better = a.mean < b.mean if lower else a.mean >= b.mean
    if a.sd is None or b.sd is None:
        return HOLDS if better else FAILS
    if abs(a.mean - b.mean) <= math.hypot(a.sd, b.sd):
        return WITHIN
    return HOLDS if better else FAILS


def combine(verdicts: list[str]) -> str:
    """A claim made of several comparisons (every mask size, every score): FAILS if one fails, HOLDS if all hold."""
    return FAILS if FAILS in verdicts else HOLDS if all(v == HOLDS for v in verdicts) else WITHIN


def claims(r: dict, sd: dict | None = None) -> list[dict]:
    """Each comparison the paper draws from the tables in ``r`` (their means over seeds; ``sd``: their standard
    deviations, None, or None for a table or row of one seed), its verdict here, the numbers, and whether a side
    of it has one seed; a table or row not in ``r`` (not run yet) decides none of the claims that read it."""

    def side(*path) -> Side:
        mean, spread = r, sd
        for key in path:
            mean, spread = mean[key], None if spread is None else spread[key]
        return Side(float(mean), None if spread is None else float(spread))

    def rows(table: str, metric) -> dict[str, list[Side]]:
        """Every row of ``table`` as its sides: ``metric(row)`` gives the path of each inside the row."""
        return {row: [side(table, "rows", row, *m) for m in metric(row)] for row in r[table]["rows"]}

    def pair(a: list[Side], b: list[Side], lower: bool, digits: int):
        """a beats b in every entry (mask sizes, scores); the numbers as a range over them, or a single pair."""
        if len(a) == 1:
            ours = f"{a[0].text(digits)} vs {b[0].text(digits)}"
        else:
            rng = lambda xs: f"{min(x.mean for x in xs):.{digits}f}-{max(x.mean for x in xs):.{digits}f}"
            ours = f"{rng(a)} vs {rng(b)}"
        return [verdict(x, y, lower=lower) for x, y in zip(a, b)], ours, [*a, *b]

    specs = []  # (table, claim, the rows it reads, (verdicts, ours, sides) from those rows' sides, the paper's)
    if "table2" in r:
        fid = next(k for k in next(iter(r["table2"]["rows"].values())) if k.startswith("FID"))
        f = rows("table2", lambda row: [(fid,)])
        specs += [
            (
                "table2",
                claim,
                need,
                lambda a, b: pair(f[a], f[b], True, 2),
                paper,
            )
            for claim, need, paper in (
                ("MT-Diffusion-X beats single-task DDPM (FID)", ("masked-x", "ddpm"), "9.85 vs 23.22"),
                (
                    "MT-Diffusion-U beats single-task DDPM (FID; the paper's text says so, its table does not)",
                    ("masked-u", "ddpm"),
                    "26.00 vs 23.22",
                ),
                ("MT-Diffusion-X beats MT-Diffusion-U (FID)", ("masked-x", "masked-u"), "9.85 vs 26.00"),
                ("MT-Diffusion-M beats MT-Diffusion-E (FID)", ("label-m", "label-e"), "33.92 vs 41.00"),
            )
        ]
        specs.append(
            (
                "table2",
                "joint image-label training costs image quality: DDPM beats M and E (FID)",
                ("ddpm", "label-m", "label-e"),
                lambda d, m, e: (
                    [verdict(f[d][0], f[x][0], lower=True) for x in (m, e)],
                    f"{f[d][0].text(2)} vs {f[m][0].text(2)}, {f[e][0].text(2)}",
                    [*f[d], *f[m], *f[e]],
                ),
                "23.22 vs 33.92, 41.00",
            )
        )
    if "table1" in r:
        t1 = rows("table1", lambda row: [(f"mask-{k}", "perceptual") for k in PATCHES])
        specs += [
            (
                "table1",
                "MT-Diffusion-X is closer to the original than the masked input, every mask size",
                ("mt_x", "clean_masked"),
                lambda a, b: pair(t1[a], t1[b], True, 3),
                "0.035-0.133 vs 0.311-0.491",
            ),
            (
                "table1",
                "MT-Diffusion-X is closer to the original than SDEdit, every mask size",
                ("mt_x", "sdedit"),
                lambda a, b: pair(t1[a], t1[b], True, 3),
                "0.035-0.133 vs 0.400-0.513",
            ),
            (
                "table1",
                "the masked input is closer to the original than SDEdit, every mask size",
                ("clean_masked", "sdedit"),
                lambda a, b: pair(t1[a], t1[b], True, 3),
                "0.311-0.491 vs 0.400-0.513",
            ),
        ]
    if "table4" in r:
        t4 = rows("table4", lambda row: [(m,) for m in SEG_METRICS])
        specs.append(
            (
                "table4",
                "MT-Diffusion beats single-task conditional diffusion on all three scores",
                ("seg2img", "seg2img-single"),
                lambda a, b: (
                    pair(t4[a], t4[b], False, 3)[0],
                    " vs ".join("/".join(x.text(3) for x in t4[arm]) for arm in (a, b)),
                    [*t4[a], *t4[b]],
                ),
                "0.95/0.85/0.70 vs 0.72/0.54/0.32",
            )
        )
    if "figure6" in r:
        f6 = rows("figure6", lambda row: [("accuracy",)])
        specs += [
            (
                "figure6",
                f"the MT-Diffusion-{h} label head classifies at least as well as classifier-only training",
                (arm, f"{arm}-classifier-only"),
                lambda a, b: pair(f6[a], f6[b], False, 3),
                "figure only (ImageNet)",
            )
            for h, arm in (("M", "label-m"), ("E", "label-e"))
        ]
    found = []
    for table, claim, need, decide, paper in specs:
        if not set(need) <= set(r[table]["rows"]):
            continue
        verdicts, ours, sides = decide(*need)
        v = combine(verdicts)
        found.append(
            {
                "table": TITLES[table],
                "claim": claim,
                "verdict": v,
                "holds": v == HOLDS,
                "one_seed": any(x.sd is None for x in sides),
                "ours": ours,
                "paper": paper,
            }
        )
    return found


def _cell(ours: float, paper: float | None, digits: int, paper_digits: int, sd: float | None = None) -> str:
    """ "ours ± sd (paper)", each with its digits; without the sd for one seed, the paper where it has a number."""
    return (
        f"{ours:.{digits}f}"
        + (f" ± {sd:.{digits}f}" if sd is not None else "")
        + (f" ({paper:.{paper_digits}f})" if paper is not None else "")
    )


def _sd(sd: dict | None, *path):
    """The standard deviation at ``path`` of the sd tree, or None (one seed)."""
    for key in path:
        if sd is None:
            return None
        sd = sd[key]
    return sd


def _header(cols) -> list[str]:
    return ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]


def _md_table2(t2: dict, sd: dict | None) -> list[str]:
    first = next(iter(t2["rows"].values()))
    names = [next(k for k in first if k == met or k.startswith(met + " (")) for met in TABLE2_METRICS]
    lines = [
        (
            f"### Table 2: training efficiency ({first['n']} joint samples from scratch vs the {first['n_reference']} "
            "test images; -X from the complete mask; the paper's ImageNet numbers in parentheses)"
        ),
        "",
        *_header(["model (paper's row)", *names]),
    ]
    for arm, row in t2["rows"].items():
        cells = [
            _cell(row[n], t2["paper"][arm][met], 2 if met in ("IS", "FID", "sFID") else 3, 2, _sd(sd, "rows", arm, n))
            for n, met in zip(names, TABLE2_METRICS)
        ]
        lines.append(f"| {NAMES[arm]} ({t2['paper_rows'][arm]}) | " + " | ".join(cells) + " |")
    return lines


def _md_table1(t1: dict, sd: dict | None) -> list[str]:
    masks = [f"mask-{k}" for k in PATCHES]
    cols = ["model", *(f"Mask-{k}" for k in PATCHES)]
    lines = [
        (
            f"### Table 1: masked-image recovery ({t1['n_per_mask']} test images per mask size, patches of 8x8 px; "
            f"{t1['perceptual_metric']}; the paper's ImageNet LPIPS in parentheses)"
        ),
        "",
        *_header(cols),
    ]
    lines += [
        f"| {NAMES[row]} | "
        + " | ".join(
            _cell(v[m]["perceptual"], t1["paper"].get(row, {}).get(m), 3, 3, _sd(sd, "rows", row, m, "perceptual"))
            for m in masks
        )
        + " |"
        for row, v in t1["rows"].items()
    ]
    lines += [
        "",
        (
            "MSE on the masked pixels (images in [-1, 1]; the paper reports none; the known pixels are pasted "
            "back in every row, so the MSE on them is 0):"
        ),
        "",
        *_header(cols),
    ]
    lines += [
        f"| {NAMES[row]} | "
        + " | ".join(_cell(v[m]["mse_masked"], None, 3, 3, _sd(sd, "rows", row, m, "mse_masked")) for m in masks)
        + " |"
        for row, v in t1["rows"].items()
    ]
    return lines


def _md_table4(t4: dict, sd: dict | None) -> list[str]:
    lines = [
        (
            f"### Table 4: class mask -> image ({next(iter(t4['rows'].values()))['all']['n']} test masks; generated "
            f"digits segmented by {t4['segmented_by']}; the paper's Cityscapes numbers in parentheses)"
        ),
        "",
        *_header(["model", "per-pixel acc.", "per-class acc.", "class IoU"]),
    ]
    return lines + [
        f"| {NAMES[arm]} | "
        + " | ".join(_cell(v[m], t4["paper"][arm][m], 3, 2, _sd(sd, "rows", arm, m)) for m in SEG_METRICS)
        + " |"
        for arm, v in t4["rows"].items()
    ]


def _md_figure6(f6: dict, sd: dict | None) -> list[str]:
    rows = f6["rows"]
    lines = [
        (
            f"### Figure 6: classification ({next(iter(rows.values()))['n']} test images; {f6['method']}; the paper "
            "plots ImageNet top-1/top-5 against fine-tuning steps, no table)"
        ),
        "",
        *_header(["model", "accuracy", "ECE (15 bins)", "NLL"]),
    ]
    return lines + [
        f"| {NAMES[arm]} | "
        + " | ".join(_cell(v[k], None, 3, 3, _sd(sd, "rows", arm, k)) for k in ("accuracy", "ece", "nll"))
        + " |"
        for arm, v in rows.items()
    ]


def _md_claims(found: list[dict], missing: list[str]) -> list[str]:
    lines = ["### Do the paper's claims hold here?", "", *_header(["source", "claim", "here", "ours", "paper"])]
    lines += [
        f"| {c['table']} | {c['claim']} | {c['verdict'] if c['holds'] else '**' + c['verdict'] + '**'}"
        f"{' (1 seed)' if c['one_seed'] else ''} | {c['ours']} | {c['paper']} |"
        for c in found
    ]
    held, failed = (sum(c["verdict"] == v for c in found) for v in (HOLDS, FAILS))
    within = len(found) - held - failed
    return lines + [
        "",
        f"{held} of {len(found)} claims hold at this scale"
        + (f"; {failed} {'does' if failed == 1 else 'do'} not (a result, not a bug to hide)" if failed else "")
        + (f"; {within} {'is' if within == 1 else 'are'} within the spread of the seeds" if within else "")
        + "."
        + (f" Not run yet at this scale: {', '.join(TITLES[t] for t in missing)}." if missing else ""),
    ]


def _md_curve(curves: dict) -> list[str]:
    """Quality against steps, the first seed's: one row per arm and metric, one column per checkpoint."""
    seed, arms = next(iter(curves.items()))
    steps = sorted({p["step"] for points in arms.values() for p in points})
    lines = [
        f"### Convergence (seed {seed}; small samples: read along a row, not against the tables)",
        "",
        *_header(["arm", "metric", *(f"step {k}" for k in steps)]),
    ]
    for arm, points in arms.items():
        for metric in ("FID", "class IoU", "accuracy"):
            at = {p["step"]: p[metric] for p in points if metric in p}
            if at:
                cells = [f"{at[k]:.{1 if metric == 'FID' else 3}f}" if k in at else "-" for k in steps]
                lines.append(f"| {NAMES[arm]} | {metric} | " + " | ".join(cells) + " |")
    return lines


def _seeds_text(seeds: dict[str, list[int]], row_seeds: dict[str, dict[str, list[int]]]) -> str:
    """``seeds``: the seeds each table was run with (the same for all after one complete run); ``row_seeds``:
    those of each row (fewer for some rows of a table run arm by arm)."""
    texts, fewer = {}, []
    for table, ss in seeds.items():
        short = {row: rs for row, rs in row_seeds.get(table, {}).items() if rs != ss}
        if short:
            fewer.append(
                f"{TITLES[table]}: "
                + ", ".join(
                    f"{NAMES[row]} seed{'s' * (len(rs) > 1)} {', '.join(map(str, rs))}" for row, rs in short.items()
                )
            )
        if len(ss) == 1:
            text = f"one seed ({ss[0]}) for training and evaluation: no spread is known"
        else:
            text = (
                f"seeds {', '.join(map(str, ss))} (each arm trained and evaluated once per seed): mean ± standard "
                "deviation over the seeds"
            )
        texts.setdefault(text, []).append(TITLES[table])
    rest = f" Rows run with fewer seeds (a one-seed row has no spread): {'; '.join(fewer)}." if fewer else ""
    if len(texts) == 1:
        return next(iter(texts)).capitalize() + "." + rest
    return " ".join(f"{', '.join(tables)}: {text}." for text, tables in texts.items()) + rest


def markdown(r: dict) -> str:
    """The four tables laid out like the paper's, our numbers first and the paper's in parentheses."""
    m, s = r["machine"], r["settings"]
    lines = [
        f"## The paper's comparisons at MNIST scale (`python -m benchmarks.paper_claims`, scale `{r['scale']}`)",
        "",
        f"Command: `{r['command']}`",
        "",
        (
            f"Machine: {m['platform']}, {m['cpu_count']} CPUs ({m['cpu']}), {m['torch_threads']} torch threads, "
            f"torch {m['torch']}, device {m['device']} ({m['device_name']}). Wall clock "
            f"{r['seconds']['total'] / 60:.1f} min (estimated {r['estimate_seconds']['total'] / 60:.1f} min up front)."
        ),
        "",
        (
            f"Every arm: {s['backbone']}, {s['steps']} steps at batch {s['batch_size']}, lr {s['lr']}; every sampler "
            f"DDIM (eta 0), {s['sample_steps']} steps. {_seeds_text(r['seeds'], r.get('row_seeds') or {})} Our numbers "
            "first, the paper's in parentheses: **other data (MNIST 32 px here; ImageNet and Cityscapes there), other "
            "scale (minutes on a CPU here; 1M iterations on GPUs there), other feature networks**: compare the "
            "direction of each comparison, not the values."
        ),
    ]
    if r["scale"] == "smoke":
        lines += ["", "**Smoke scale: a test that the pipeline runs. These numbers mean nothing.**"]
    runs_on: dict[str, list[str]] = {}
    for seed, where in (r.get("provenance") or {}).items():
        for table, by_row in where.items():
            for text in dict.fromkeys(by_row.values()):
                part = [row for row, w in by_row.items() if w == text]
                names = "" if len(part) == len(by_row) else f" ({', '.join(NAMES[row] for row in part)})"
                runs_on.setdefault(text, []).append(f"{TITLES[table]} seed {seed}{names}")
    if len(runs_on) > 1:
        lines += [
            "",
            "Put together from several runs: " + "; ".join(f"{', '.join(p)} on {w}" for w, p in runs_on.items()) + ".",
        ]
    sd = r["sd"] or {}
    draw = {"table2": _md_table2, "table1": _md_table1, "table4": _md_table4, "figure6": _md_figure6}
    for part in (
        *(draw[t](r[t], sd.get(t)) for t in TABLES if t in r),
        _md_claims(r["claims"], [t for t in TABLES if t not in r]),
        *([_md_curve(r["curve"])] if r.get("curve") else []),
    ):
        lines += ["", *part]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- seeds


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def mean_and_sd(trees: list) -> tuple:
    """The element-wise mean and sample standard deviation of equally shaped nested dicts (other leaves are
    taken from the first tree; the sd tree holds None there). With one tree the sd tree is None."""
    if len(trees) == 1:
        return trees[0], None

    def walk(xs):
        if isinstance(xs[0], dict):
            pairs = {k: walk([x[k] for x in xs]) for k in xs[0]}
            return {k: m for k, (m, _) in pairs.items()}, {k: d for k, (_, d) in pairs.items()}
        if all(_is_number(x) for x in xs):
            if all(x == xs[0] for x in xs):  # a count (samples, steps) stays an int
                return xs[0], 0.0
            return statistics.fmean(xs), statistics.stdev(xs)
        return xs[0], None

    return walk(trees)
