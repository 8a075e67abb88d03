"""Ablations that explain the paper's comparisons: one setting of one arm of ``paper_claims.py`` changed at a time.

    python -m benchmarks.ablations --study table1|table2|table4|figure6 --scale converged [--steps 1600]
        [--variants middle-up,lam-1] [--seeds 0,1,2] [--runs runs/ablations] [--out-dir ...]

A study takes the arms of one of the paper's tables as ``paper_claims.py`` builds them (same presets, backbone,
training and sampler at the chosen scale) and lists named variants, each a change of one setting: config
overrides for the arms it trains anew, or options of the evaluation for the arms it reads (classifier-free
guidance, the time index the label head is read at, SDEdit's start and paste-back). Every variant of a study
is trained for the same steps and seeds and scored as its table is (Table 4: the class mask -> image scores;
Figure 6: head accuracy, ECE and NLL; Table 2: FID-family scores of joint samples; Table 1: the perceptual
distance of SDEdit per mask size), so rows differ by their one change only.

Runs live in ``RUNS/seed-S/ARM`` (the baseline, shared with ``paper_claims.py`` when ``--runs`` and the steps
are the same: at ``--scale converged`` and its 8,000 steps the baseline rows reuse its arms) and
``RUNS/seed-S/ARM@OVERRIDES``, named by the variant's config overrides of that arm (so variants of two studies
that change an arm in the same way, such as E's stop-gradient in Table 2 and Figure 6, train it once); each is
reused when finished, resumed when not. Results add up like
``paper_claims.py``'s: the rows of the variants and seeds run now are put beside those of earlier runs with the
same settings in ``ablation-STUDY-SCALE-STEPS.json`` and ``.md``; every row is the mean ± sd over the seeds it has.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.claims import arms, paper, report, scores
from benchmarks.common import RESULTS, machine, seed_list, where_run
from mtdiff.build import load_data
from mtdiff.runs import load_run


@dataclass(frozen=True)
class Variant:
    what: str  # the one change, in words
    train: dict[str, tuple[str, ...]] = field(default_factory=dict)  # arm -> config overrides (trained anew)
    evaluate: dict = field(default_factory=dict)  # options of the study's scoring, for ``reads``
    reads: tuple[str, ...] = ()  # arms scored with ``evaluate`` from their baseline runs
    finetune: float = 0.0  # > 0: ``train``'s arms start from their baseline runs' weights and train only to
    # classify, for this fraction of the baseline's steps (warm-up a sixteenth of them, then cosine)


@dataclass(frozen=True)
class Study:
    table: str  # the paper_claims table whose arms and scores it uses
    arms: tuple[str, ...]  # the baseline rows
    columns: tuple[str, ...]  # the scores shown (keys of the score dicts)
    variants: dict[str, Variant]

    def rows(self, name: str) -> list[str]:
        """The arms a variant is scored on (the baseline: every arm)."""
        if name == BASELINE:
            return list(self.arms)
        v = self.variants[name]
        return [*v.train, *(a for a in v.reads if a not in v.train)]

    def finetune(self, name: str, arm: str) -> float:
        """The fraction of the baseline's steps for which variant ``name`` fine-tunes ``arm`` (0: it does not)."""
        v = None if name == BASELINE else self.variants[name]
        return v.finetune if v is not None and arm in v.train else 0.0

    def overrides(self, name: str, arm: str) -> tuple[str, ...]:
        """The config overrides variant ``name`` trains ``arm`` with (none: the arm is the baseline's); a fine-tuning
        variant's start with "finetune", which names its runs apart from a run of those settings from scratch."""
        own = () if name == BASELINE else self.variants[name].train.get(arm, ())
        return (f"finetune={self.finetune(name, arm)}", *own) if self.finetune(name, arm) else own


BASELINE = "baseline"
SEG = tuple(scores.SEG_PREFIX + m for m in paper.SEG_METRICS)
MT, SINGLE = "seg2img", "seg2img-single"
STUDIES = {
    "table4": Study(
        "table4",
        (MT, SINGLE),
        SEG,
        {
            "middle-up": Variant(
                "mask head fed by the middle block and upsampled (middle-up), not the output-block replica",
                {MT: ("modalities.mask.head=middle-up",)},
            ),
            "lam-0.01": Variant(
                "lambda 0.01 (the mask head's loss weight; 0.1 in the baseline)", {MT: ("diffusion.lam=0.01",)}
            ),
            "lam-1": Variant("lambda 1", {MT: ("diffusion.lam=1.0",)}),
            "enc-drop-0": Variant(
                "enc_drop_prob 0: z_t always carries the mask's encoding (0.5 in the baseline)",
                {MT: ("train.enc_drop_prob=0.0",)},
            ),
            "cond-drop-0": Variant(
                "cond_drop_prob 0 for both arms: the mask input never dropped (0.1 in the baseline)",
                {MT: ("train.cond_drop_prob=0.0",), SINGLE: ("train.cond_drop_prob=0.0",)},
            ),
            "guidance-2": Variant(
                "classifier-free guidance 2 on the mask at sampling, both arms (1 = none, the baseline)",
                evaluate={"guidance": 2.0},
                reads=(MT, SINGLE),
            ),
        },
    ),
    "figure6": Study(
        "figure6",
        arms.TABLES["figure6"],
        ("accuracy", "ece", "nll"),
        {
            "lam-0.01": Variant(
                "lambda 0.01 (the label head's loss weight; 0.1 in the baseline)",
                {a: ("diffusion.lam=0.01",) for a in ("label-m", "label-e")},
            ),
            "lam-1": Variant("lambda 1", {a: ("diffusion.lam=1.0",) for a in ("label-m", "label-e")}),
            "head-detach": Variant(
                "stop-gradient between the label head and the shared backbone (head_detach)",
                {a: ("modalities.label.head_detach=true",) for a in ("label-m", "label-e")},
            ),
            "finetune": Variant(
                "the paper's protocol: every arm, from its trained weights, trained only to classify (clean images, "
                "as the classifier-only arms) for a fifth of its steps more (1,600 at 8,000) at lr 2e-4, warm-up "
                "a sixteenth of them, cosine",
                {a: ("train.lr=2e-4",) for a in arms.TABLES["figure6"]},
                finetune=0.2,
            ),
            "read-t-50": Variant(
                "the head read at time index 50 instead of 0 (inverse mode)",
                evaluate={"t": 50},
                reads=("label-m", "label-e"),
            ),
            # Where the label's encoding weighs most in z_t (alpha~_t peaks near t = 258 on the linear schedule):
            # read there without and with the true label's encoding, a head that decodes the encoding, not the
            # image, reads near 1 when told and near chance when not.
            **{
                f"{pre}read-t-200{told}": Variant(
                    f"{what}the head read at time index 200 (inverse mode)"
                    + (", z_t carrying the true label's encoding (the head told its answer)" if told else ""),
                    {a: ("modalities.label.head_detach=true",) for a in ("label-m", "label-e")} if pre else {},
                    evaluate={"t": 200, "told": bool(told)},
                    reads=("label-m", "label-e"),
                )
                for pre, what in (("", ""), ("head-detach-", "stop-gradient (head_detach); "))
                for told in ("", "-told")
            },
        },
    ),
    "table1": Study(
        "table1",
        ("ddpm",),
        tuple(f"mask-{k}" for k in paper.PATCHES),
        {
            "sdedit-no-paste": Variant(
                "SDEdit's output as it comes: the known pixels not pasted back (Table 1 pastes them in every row)",
                evaluate={"paste": False},
                reads=("ddpm",),
            ),
            "sdedit-t-250": Variant("SDEdit from t = T/4 instead of T/2", evaluate={"t_start": 250}, reads=("ddpm",)),
            "sdedit-t-750": Variant("SDEdit from t = 3T/4 instead of T/2", evaluate={"t_start": 750}, reads=("ddpm",)),
        },
    ),
    "table2": Study(
        "table2",
        ("masked-x", "label-m", "label-e"),
        ("FID", "IS"),
        {
            "e-lam-0.01": Variant("E: lambda 0.01 (0.1 in the baseline)", {"label-e": ("diffusion.lam=0.01",)}),
            "e-lam-1": Variant("E: lambda 1", {"label-e": ("diffusion.lam=1.0",)}),
            "e-head-detach": Variant(
                "E: stop-gradient between its classifier and the shared backbone (head_detach)",
                {"label-e": ("modalities.label.head_detach=true",)},
            ),
            "gamma-0.5": Variant(
                "M and E: aggregation strength gamma 0.5 (1 in the baseline)",
                {a: ("modalities.label.gamma=0.5",) for a in ("label-m", "label-e")},
            ),
            "gamma-2": Variant(
                "M and E: gamma 2", {a: ("modalities.label.gamma=2.0",) for a in ("label-m", "label-e")}
            ),
            "x-full-mask-0.5": Variant(
                "-X: half the training inputs fully masked (full_mask_prob 0.5; 0.1 in the baseline)",
                {"masked-x": ("modalities.masked.full_mask_prob=0.5",)},
            ),
            "x-full-mask-1": Variant(
                "-X: every training input fully masked (full_mask_prob 1: generation only)",
                {"masked-x": ("modalities.masked.full_mask_prob=1.0",)},
            ),
        },
    ),
}


def run_dir(runs: Path, seed: int, arm: str, name: str, study: Study) -> Path:
    """Where an arm of a variant is trained: when the variant retrains it, a directory named by its overrides (one
    run per distinct setting, whichever study asks for it), else the baseline's."""
    own = study.overrides(name, arm)
    return arms.arm_dir(runs, seed, f"{arm}@{','.join(own)}" if own else arm)


def pick(got: dict, column: str) -> float:
    """The score named ``column``, or the one it abbreviates ("FID" for "FID (MNIST-CNN (ccexam) features)")."""
    return got[next(k for k in got if k == column or (k.startswith(column + " (") and k.endswith(")")))]


def score(study: Study, run, scale: arms.Scale, test, extractor, seed: int, cache_dir: Path, **kw) -> dict:
    """The study's table's scores of one run (``kw``: the variant's evaluation options), its columns picked."""
    if study.table == "table4":
        got = scores.translation_scores(run, scale, scale.num_translate, test, seed, **kw)
    elif study.table == "figure6":
        got = scores.head_scores(run, test, scale.num_classify, seed, **kw)
    elif study.table == "table1":
        got = scores.sdedit_scores(run, scale, test, extractor, seed, **kw)
    else:
        got = scores.generation_scores(run, scale, scale.num_samples, test, extractor, seed, cache_dir)
    return {c: pick(got, c) for c in study.columns}


def markdown(result: dict) -> str:
    study, s = STUDIES[result["study"]], result["settings"]
    head = ["variant", "arm", *(c.rsplit("/", 1)[-1] for c in study.columns), "seeds"]
    scored_by = {
        "table1": f"; rows: SDEdit of the DDPM arm, perceptual distance ({s['features']} features) per mask size",
        "table2": f"; FID and IS on {s['features']} features",
    }.get(study.table, "")
    lines = [
        f"## Ablation of {paper.TITLES[study.table]} (`python -m benchmarks.ablations --study {result['study']}`)",
        "",
        f"Every arm: {s['backbone']}, {s['steps']} steps at batch {s['batch_size']}; sampler DDIM (eta 0), "
        f"{s['sample_steps']} steps{scored_by}. Mean ± sd over the seeds each row has; the runs that scored the "
        "rows are listed below the table.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, by_arm in result["rows"].items():
        for arm, row in by_arm.items():
            cells = [
                f"{row['mean'][c]:.3f}" + ("" if row["sd"] is None else f" ± {row['sd'][c]:.3f}") for c in study.columns
            ]
            lines.append(
                f"| {name} | {paper.NAMES[arm]} | " + " | ".join(cells) + f" | {','.join(map(str, row['seeds']))} |"
            )
    lines += ["", f"- `{BASELINE}`: every arm as `paper_claims.py` builds it at this scale and step count."]
    lines += [f"- `{name}`: {study.variants[name].what}." for name in result["rows"] if name != BASELINE]
    lines += ["", "Scored by:"]
    for (command, where), scored in _runs_behind(result).items():
        lines.append(f"- `{command}` ({where}): {'; '.join(scored)}")
    return "\n".join(lines) + "\n"


def _runs_behind(result: dict) -> dict[tuple[str, str], list[str]]:
    """(command, machine and day) -> the rows it scored, as "variant / arm, seeds S,...", in table order."""
    runs: dict[tuple[str, str], list[str]] = {}
    for name, by_arm in result["rows"].items():
        for arm in by_arm:
            by_run: dict[tuple[str, str], list[str]] = {}
            for seed, made_by in sorted(result["provenance"][f"{name}/{arm}"].items(), key=lambda kv: int(kv[0])):
                by_run.setdefault((made_by["command"], made_by["where"]), []).append(seed)
            for run, seeds in by_run.items():
                runs.setdefault(run, []).append(
                    f"{name} / {paper.NAMES[arm]}, seed{'s' * (len(seeds) > 1)} {','.join(seeds)}"
                )
    return runs


def put_together(per_seed: dict, before: dict | None, study: Study, made_by: dict) -> dict:
    """Per variant and arm: the scores of every seed (earlier runs' first, this run's over them), their mean and
    sd over the study's columns (sd None with one seed), in the study's variant order; and per row and seed the
    run that scored it (``made_by`` for this run's: its command, machine and day)."""
    before = before or {}
    merged = json.loads(json.dumps(before.get("per_seed", {})))
    earlier = {}  # files from before rows kept their own provenance: every earlier row is the file's last run's
    if before:
        earlier = {"command": before["command"], "where": where_run(before["machine"], before.get("date"))}
    provenance = json.loads(json.dumps(before.get("provenance", {})))
    for key, seeds in merged.items():
        provenance.setdefault(key, {}).update({s: earlier for s in seeds if s not in provenance[key]})
    for key, seeds in per_seed.items():
        merged.setdefault(key, {}).update(seeds)
        provenance.setdefault(key, {}).update({s: made_by for s in seeds})
    rows = {}
    for name in (BASELINE, *study.variants):
        for arm in study.rows(name):
            seeds = merged.get(f"{name}/{arm}")
            if not seeds:
                continue
            mean, sd = report.mean_and_sd([seeds[s] for s in sorted(seeds, key=int)])
            rows.setdefault(name, {})[arm] = {"mean": mean, "sd": sd, "seeds": sorted(map(int, seeds))}
    return {"per_seed": merged, "provenance": provenance, "rows": rows}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", choices=sorted(STUDIES), required=True)
    ap.add_argument("--scale", choices=sorted(arms.SCALES), required=True)
    ap.add_argument("--steps", type=int, default=None, help="training steps of every arm (default: the scale's)")
    ap.add_argument(
        "--variants",
        default=None,
        metavar="V,...",
        help="the variants to run (default: all of the study): "
        + "; ".join(f"{name}: {', '.join(st.variants)}" for name, st in STUDIES.items()),
    )
    ap.add_argument("--seeds", type=seed_list, default=[0], metavar="S,...")
    ap.add_argument("--runs", type=Path, default=Path("runs/ablations"), help="one run directory per arm here")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument(
        "--features", default="mnist-cnn", help="image feature extractor (table1: perceptual distance; table2: FID, IS)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the scale's)")
    ap.add_argument(
        "--rescore", action="store_true", help="score again the rows the results file already has for these seeds"
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    study = STUDIES[args.study]
    names = (
        list(study.variants) if args.variants is None else [v.strip() for v in args.variants.split(",") if v.strip()]
    )
    unknown = [v for v in names if v not in study.variants]
    if unknown:
        ap.error(f"--variants: {', '.join(unknown)} not in the {args.study} study ({', '.join(study.variants)})")
    args.variant_names = [BASELINE, *names]
    if args.steps is not None and args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")
    return args


def main(argv: list[str] | None = None) -> dict:
    from mtdiff.pretrained.images import load_image_features

    args = parse_args(argv)
    t0 = time.perf_counter()
    study, scale = STUDIES[args.study], arms.SCALES[args.scale]
    if args.threads or scale.threads:
        torch.set_num_threads(args.threads or scale.threads)
    steps = [f"train.steps={args.steps}"] if args.steps else []

    def config(arm: str, variant: str, seed: int):
        fraction = study.finetune(variant, arm)
        if not fraction:
            return arms.arm_config(arm, scale, seed, [*steps, *study.overrides(variant, arm)])
        more = math.ceil(fraction * config(arm, BASELINE, seed).train.steps)  # from the arm's baseline weights
        start = f"train.init_from={run_dir(args.runs, seed, arm, BASELINE, study)}"
        own = (f"train.steps={more}", f"train.warmup_steps={math.ceil(more / 16)}", *study.variants[variant].train[arm])
        return arms.arm_config(arm, scale, seed, [*steps, *own, start])

    jobs = {  # (variant, arm, seed) -> run directory, each trained once
        (name, arm, seed): run_dir(args.runs, seed, arm, name, study)
        for name in args.variant_names
        for arm in study.rows(name)
        for seed in args.seeds
    }
    c = config(study.arms[0], BASELINE, args.seeds[0])
    train, test = load_data(c, "train"), load_data(c, "test")
    progress = not args.quiet and sys.stdout.isatty()
    trained = {}
    for (name, arm, seed), where in jobs.items():
        if str(where) not in trained:
            trained[str(where)] = arms.train_arm(
                arm,
                config(arm, name, seed),
                where,
                train,
                progress=progress,
                objective=arms.CLASSIFY if study.finetune(name, arm) else None,
            )
    settings = {
        "study": args.study,
        "scale": args.scale,
        "backbone": arms.backbone_text(c),
        "steps": c.train.steps,
        "batch_size": c.train.batch_size,
        "sample_steps": scale.sample_steps,
        "features": args.features,
    }
    stem = args.out_dir / f"ablation-{args.study}-{args.scale}-{c.train.steps}"
    before = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").is_file() else None
    if before is not None and arms.differing(before.get("settings", {}), settings):
        print(f"[ablations] {stem}.json holds other settings; it is replaced", flush=True)
        before = None
    done = {} if before is None or args.rescore else before["per_seed"]
    todo = {job: where for job, where in jobs.items() if str(job[2]) not in done.get(f"{job[0]}/{job[1]}", {})}
    for name, arm, seed in (job for job in jobs if job not in todo):
        print(f"[ablations] {name} / {arm} / seed {seed}: scored before, in {stem}.json", flush=True)
    extractor = None
    if study.table in ("table1", "table2") and todo:
        extractor = load_image_features(args.features, scale.device)
    per_seed: dict[str, dict] = {}
    for (name, arm, seed), where in todo.items():
        kw = {} if name == BASELINE or arm not in study.variants[name].reads else study.variants[name].evaluate
        run = load_run(where, device=scale.device)
        per_seed.setdefault(f"{name}/{arm}", {})[str(seed)] = score(
            study, run, scale, test, extractor, seed, args.runs / "eval", **kw
        )
        print(f"[ablations] {name} / {arm} / seed {seed}: scored", flush=True)
    mach, date = machine(scale.device), time.strftime("%Y-%m-%d")
    command = shlex.join(["python", "-m", "benchmarks.ablations", *(sys.argv[1:] if argv is None else argv)])
    whole = put_together(per_seed, before, study, {"command": command, "where": where_run(mach, date)})
    result = {
        "benchmark": "ablations",
        "study": args.study,
        "machine": mach,
        "date": date,
        "command": command,  # this run's; ``provenance`` names the run behind every row and seed
        "settings": settings,
        "variants": {name: study.variants[name].what for name in args.variant_names if name != BASELINE},
        "arms": trained,
        "seconds": round(time.perf_counter() - t0, 1),
        **whole,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"[ablations] wrote {stem}.json and .md in {result['seconds']:.0f} s", flush=True)
    return result


if __name__ == "__main__":
    main()
