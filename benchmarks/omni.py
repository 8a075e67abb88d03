"""One model, every modality: any subset known, the rest generated, checked; and the omni model beside its specialists.

    python -m benchmarks.omni anytoany [--run mnist-omni] [--num 100] [--sampler S --steps N] [--threads N]
    python -m benchmarks.omni table [--omni mnist-omni]
    python -m benchmarks.omni samplers [--runs mnist-omni,mnist-label-m] [--num 32] [--threads N]

``anytoany`` asks one run (a shipped name or a run directory) the questions of ``SUBSETS``, each about ``--num``
test digits: nothing known; the label only; the class mask only; the caption only; the image with 10 random patches
masked; label and class mask; caption and masked image. The given values all describe the same test digit (its
class, its class mask, a caption naming its class, its pixels), so they agree with one another. For each subset it
checks that the given values come back exactly (labels, class maps, caption embeddings, the known pixels) and scores
whether the generated values agree with them, with the external MNIST-CNN (ccexam) as the judge:

- ``class_agreement``: the MNIST-CNN reads the given class (label, caption or class mask) in the generated image;
- ``mask_class_iou``: the given class mask against the generated image segmented by threshold and the MNIST-CNN;
- ``restored_class``: the restored image is still the test digit's class;
- ``head_agreement``: a generated label (the label head's) agrees with the MNIST-CNN's reading of the image;
- ``head_mask_class_iou``: a generated class mask (the mask head's) against the image segmented as above;
- ``representation_cosine``: the generated MNIST-CNN representation against the generated image's;
- ``recognised``: share of generated images the MNIST-CNN reads with p > 0.9.

Only modalities the run has take part: a subset that needs one it lacks is skipped, and says so. The modalities are
found by what a user gives (``Modality.value``: class, class_map, text, image), not by kind names.

``table`` reads ``benchmarks/results/shipped.json`` (``python -m benchmarks.shipped score``) and sets every task of
the omni model beside the shipped specialist of that task, with the goal of the omni issue: within 1 point of the
specialist for shares and accuracies, within 1.2x for FID and MSE. Writes ``omni.json`` and ``omni.md``.

``samplers`` asks each run of ``--runs`` for ``--num`` samples with the label given (the classes in turn, seed 0)
with each sampler of ``SAMPLER_ARMS`` (``--hold``: these modalities held at "nothing known", the rest generated) and
scores the class asked, the recognised share (MNIST-CNN) and the share of non-black pixels (a grey or speckled
background shows there); and it measures the network's noise prediction on ``--num`` test digits at t = 500 with
the label's encoding in z_t (the label given, everything else "nothing known") and without (everything "nothing
known"): where the two errors part, the network cannot tell which encodings z_t holds, and a deterministic
sampler, which keeps every error of eps, fails first. Writes ``omni-samplers[-hold-NAME].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, machine, where_run

# name of the question -> what is given, as value types of mtdiff.modalities.VALUE_TYPES ("patches": the image,
# partly); the order of the list
SUBSETS: dict[str, tuple[str, ...]] = {
    "nothing": (),
    "label": ("class",),
    "mask": ("class_map",),
    "caption": ("text",),
    "image with patches": ("patches",),
    "label + mask": ("class", "class_map"),
    "caption + masked image": ("text", "patches"),
}
PATCHES = 10
# name -> Run.sample keywords: the run's ancestral sampler, and the deterministic ones at few steps
SAMPLER_ARMS: dict[str, dict[str, Any]] = {
    "ancestral, 250 steps": {"sampler": "ancestral", "steps": 250},
    "DDIM eta 0, 50 steps": {"sampler": "ddim", "steps": 50, "eta": 0.0},
    "DPM-Solver++(2M), 20 steps": {"sampler": "dpm-solver", "steps": 20},
}
EPS_T = 500
BLACK = -0.9  # a pixel above this is not background

# task score of the omni model -> (its specialist, the score key there, "share" | "ratio", higher is better)
# "share": within 1 point (0.01) of the specialist; "ratio": within 1.2x of it
TASKS: dict[str, tuple[str, str, str, bool]] = {
    "recognised": ("mnist-label-m", "recognised", "share", True),
    "recognised_strict": ("mnist-label-m", "recognised_strict", "share", True),
    "FID": ("mnist-label-m", "FID", "ratio", False),
    "head_accuracy": ("mnist-label-m", "head_accuracy", "share", True),
    "class_conditional": ("mnist-label-m", "class_conditional", "share", True),
    "class_conditional_head_guided": ("mnist-label-m", "class_conditional_head_guided", "share", True),
    "seg_class_iou": ("mnist-seg2img", "seg_class_iou", "share", True),
    "seg_inverse_pixel_accuracy": ("mnist-seg2img", "seg_inverse_pixel_accuracy", "share", True),
    "caption_agreement": ("mnist-text2img", "caption_agreement", "share", True),
    "caption_representation_cosine_mnist-cnn": (
        "mnist-text2img",
        "caption_representation_cosine_mnist-cnn",
        "share",
        True,
    ),
    **{f"masked_mse_{k}": ("mnist-demo", f"masked_mse_{k}", "ratio", False) for k in (5, 10, 15, 20)},
}


# ---------------------------------------------------------------------------- any-to-any


def modalities_by_value(run) -> dict[str, str]:
    """{value type: modality name} of the run's first modality of each value type."""
    out: dict[str, str] = {}
    for name, mod in run.model.modalities.items():
        out.setdefault(mod.value, name)
    return out


def given_values(run, test, subset: tuple[str, ...], n: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(given for ``Run.generate``, the truth: pixels, classes, class maps, captions, keep) of ``n`` test digits drawn
    with ``seed``; every given value describes the same digit."""
    from mtdiff.data.derived import class_mask

    names = modalities_by_value(run)
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(test), generator=g)[:n]
    batch = test.batch(rows, run.device)
    x, y = run.pixels(batch["image"]), batch["label"].to(run.device)
    truth: dict[str, Any] = {"pixels": x, "classes": y}
    given: dict[str, Any] = {}
    if "class" in subset:
        given[names["class"]] = y
    if "class_map" in subset:
        mod = run.model.modalities[names["class_map"]]
        truth["class_map"] = mod.derive(batch, None) if mod.source in batch else class_mask(x, y)
        given[names["class_map"]] = truth["class_map"]
    if "text" in subset:
        mod = run.model.modalities[names["text"]]
        truth["captions"] = [mod.caption(int(c), i % len(mod.templates)) for i, c in enumerate(y.tolist())]
        given[names["text"]] = truth["captions"]
    if "patches" in subset:
        keep = run.draw_masks(n, patches=PATCHES, generator=run.generator(seed + 1))
        truth["keep"] = keep
        given["image"] = (x, keep)
    return given, truth


def needs(run, subset: tuple[str, ...]) -> list[str]:
    """The value types ``subset`` gives that the run has no modality for."""
    have = set(modalities_by_value(run))
    have |= {"patches"} if "image" in have else set()
    return [v for v in subset if v not in have]


@torch.no_grad()
def check_subset(run, clf, test, subset: tuple[str, ...], *, n: int, seed: int, **sample_kw) -> dict[str, Any]:
    """Generate ``n`` samples with ``subset`` given and score them (see the module docstring)."""
    from mtdiff.data.derived import class_mask
    from mtdiff.evaluate import representation_cosine
    from mtdiff.metrics import SegmentationMeter

    given, truth = given_values(run, test, subset, n, seed)
    names, mods = modalities_by_value(run), run.model.modalities
    t0 = time.perf_counter()
    s = run.generate(given, n, seed=seed, **sample_kw)
    out: dict[str, Any] = {"given": sorted(given), "seconds": round(time.perf_counter() - t0, 1)}
    images = s.images.float()
    logits = clf(images)
    read = logits.argmax(1)
    out["recognised"] = float((logits.softmax(1).max(1).values > 0.9).float().mean())
    segmented = class_mask(images, read)

    def iou(pred, target) -> float:
        k = mods[names["class_map"]].num_classes
        meter = SegmentationMeter(k)
        meter.update(pred.cpu(), target.cpu())
        return float(meter.compute()["class_iou"])

    # the given values come back exactly
    exact: dict[str, bool] = {}
    if "class" in subset:
        exact["label"] = bool(torch.equal(s.labels.cpu(), truth["classes"].cpu()))
    if "class_map" in subset:
        back = s.data[names["class_map"]]
        back = back if not back.is_floating_point() else back.argmax(1)
        exact["class_map"] = bool(torch.equal(back.cpu(), truth["class_map"].cpu()))
    if "text" in subset:
        mod = mods[names["text"]]
        want = mod.given(truth["captions"], n).to(s.data[names["text"]])
        exact["caption"] = bool(torch.equal(s.data[names["text"]], want))
    if "patches" in subset:
        keep = truth["keep"].expand_as(images)
        exact["known_pixels_max_abs"] = float(((images - truth["pixels"].float()).abs() * keep).max())
        exact["known_pixels"] = exact["known_pixels_max_abs"] == 0.0
    out["exact"] = exact

    # the generated values agree with the given ones
    classes = truth["classes"]
    if any(v in subset for v in ("class", "text", "class_map")):
        out["class_agreement"] = float((read == classes).float().mean())
    if "class_map" in subset:
        out["mask_class_iou"] = iou(segmented, truth["class_map"])
    if "patches" in subset:
        out["restored_class"] = float((read == classes).float().mean())
    if "class" in names and "class" not in subset:
        out["head_agreement"] = float((s.labels == read).float().mean())
    if "class_map" in names and "class_map" not in subset:
        out["head_mask_class_iou"] = iou(s.data[names["class_map"]].argmax(1), segmented)
    cos = representation_cosine(run.model, s, images)
    out.update({f"representation_{k.split('_', 1)[1]}": v for k, v in cos.items()})
    return out


def cmd_anytoany(args, argv: list[str]) -> dict:
    from mtdiff.build import load_data
    from mtdiff.pretrained.mnist import load_mnist_classifier
    from mtdiff.runs import load_run

    if args.threads:
        torch.set_num_threads(args.threads)
    run = load_run(args.run)
    clf = load_mnist_classifier(run.device)
    test = load_data(run.config, "test")
    kw = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps)) if v is not None}
    rows: dict[str, Any] = {}
    for i, (question, subset) in enumerate(SUBSETS.items()):
        missing = needs(run, subset)
        if missing:
            rows[question] = {"skipped": f"the run has no modality of value {', '.join(missing)}"}
            continue
        rows[question] = check_subset(run, clf, test, subset, n=args.num, seed=args.seed + i, **kw)
        print(f"[omni] {question}: {json.dumps(rows[question])}", file=sys.stderr, flush=True)
    s = run.config.sample
    result = {
        "command": "python -m benchmarks.omni " + shlex.join(argv),
        "machine": machine("cpu"),
        "date": date.today().isoformat(),
        "run": str(args.run),
        "step": run.step,
        "num": args.num,
        "sampler": f"{args.sampler or s.sampler} {args.steps or s.steps} steps",
        "subsets": rows,
    }
    stem = args.out_dir / f"omni-anytoany-{Path(str(args.run)).name}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    stem.with_suffix(".md").write_text(anytoany_markdown(result))
    print(anytoany_markdown(result))
    return result


def _v(x, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def anytoany_markdown(r: dict) -> str:
    cols = [
        "recognised",
        "class_agreement",
        "mask_class_iou",
        "restored_class",
        "head_agreement",
        "head_mask_class_iou",
        "representation_cosine_mnist-cnn",
    ]
    lines = [
        f"Command: `{r['command']}`",
        "",
        f"Run {r['run']} at step {r['step']}, {r['num']} test digits per question, {r['sampler']}; scored on "
        f"{where_run(r['machine'], r['date'])}. Judge: the MNIST-CNN (ccexam).",
        "",
        "| given | given back exactly | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for q, row in r["subsets"].items():
        if "skipped" in row:
            lines.append(f"| {q} | skipped: {row['skipped']} |" + " |" * len(cols))
            continue
        ex = row["exact"]
        flags = [k for k, v in ex.items() if isinstance(v, bool)]
        exact = "yes" if all(ex[k] for k in flags) else "NO: " + ", ".join(k for k in flags if not ex[k])
        lines.append(
            f"| {q} | {exact if flags else '(nothing given)'} | " + " | ".join(_v(row.get(c)) for c in cols) + " |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- omni against the specialists


def compare(omni: dict, specialists: dict[str, dict]) -> list[dict]:
    """A row per task: the omni model's score, its specialist's, the goal and whether it is met (None: a score is
    missing)."""
    rows = []
    for key, (spec, spec_key, rule, higher) in TASKS.items():
        o, s = omni.get(key), specialists.get(spec, {}).get(spec_key)
        met = better = None
        if isinstance(o, (int, float)) and isinstance(s, (int, float)):
            if rule == "share":
                met = o >= s - 0.01 if higher else o <= s + 0.01
            else:
                met = o <= 1.2 * s if not higher else o >= s / 1.2
            better = o > s if higher else o < s
        rows.append(
            {
                "task": key,
                "omni": o,
                "specialist": spec,
                "specialist_score": s,
                "rule": rule,
                "met": met,
                "better": better,
            }
        )
    return rows


# ---------------------------------------------------------------------------- samplers


def eps_errors(run, test, n: int, seed: int, t: int = EPS_T) -> dict[str, float]:
    """Noise-prediction MSE on ``n`` test digits at time index ``t``: with the label given (its encoding in z_t
    and, for a backbone input, in the backbone's inputs) and with nothing given."""
    name = modalities_by_value(run)["class"]
    model, process = run.model, run.process
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(test), generator=g)[:n]
    z0, labels = test.to_float(idx).to(run.device), test.labels[idx]
    noise = torch.randn(z0.shape, generator=g).to(run.device)
    tt = torch.full((n,), t, device=run.device)
    nothing = model.null_data(list(model.modalities), n, device=run.device)
    out = {}
    for case, data in (("label", {**nothing, name: labels.to(run.device)}), ("nothing", nothing)):
        data = {k: model.modalities[k].canonical(v) for k, v in data.items()}
        enc = model.encode(data)
        zt = process.q_sample(z0, tt, enc, noise)
        eps, _ = model.predict(zt, tt, data, enc)
        out[f"eps_mse_{case}"] = float(((eps.float() - noise) ** 2).mean())
    return out


def label_given(run, asked: torch.Tensor, hold: tuple[str, ...], *, seed: int, **sampler_kw) -> torch.Tensor:
    """Images of the classes ``asked`` with the label given, the modalities ``hold`` held at "nothing known" (their
    encodings off z_t, as when a user asks for none of them) and the rest generated from their heads."""
    from mtdiff.sampling import generate_given

    model, name = run.model, modalities_by_value(run)["class"]
    known = {**model.null_data(hold, len(asked), device=run.device), name: model.modalities[name].canonical(asked)}
    kw = run.sampler_kwargs(seed=seed, **sampler_kw)
    state, _ = generate_given(model, run.process, batch=len(asked), z_shape=model.z_shape, known=known, **kw)
    return run.latent.decode(state.z).float().cpu()


def background(images: torch.Tensor) -> float:
    """Share of pixels brighter than near-black (> -0.9 in [-1, 1]): MNIST's digits cover a fifth of the image, so
    much more is a grey or speckled background."""
    return float((images > BLACK).float().mean())


def cmd_samplers(args, argv: list[str]) -> dict:
    from mtdiff.build import load_data
    from mtdiff.pretrained.mnist import load_mnist_classifier
    from mtdiff.runs import load_run

    if args.threads:
        torch.set_num_threads(args.threads)
    hold = tuple(n for n in args.hold.split(",") if n)
    rows: dict[str, Any] = {}
    real = None
    for name in args.runs.split(","):
        run = load_run(name)
        unknown = [n for n in hold if n not in run.model.modalities]
        if unknown:
            raise SystemExit(
                f"--hold: {name} has no modality {', '.join(unknown)} (it has {list(run.model.modalities)})"
            )
        clf = load_mnist_classifier(run.device)
        test = load_data(run.config, "test")
        real = background(test.to_float(torch.arange(args.num)))
        asked = torch.arange(args.num) % 10
        row: dict[str, Any] = {"step": run.step, "encoded_flags": run.model.flag_embed is not None}
        row.update(eps_errors(run, test, args.num, args.seed))
        for arm, kw in SAMPLER_ARMS.items():
            t0 = time.perf_counter()
            images = label_given(run, asked, hold, seed=args.seed, **kw)
            probs = clf(images.to(run.device)).softmax(1).cpu()
            row[arm] = {
                "class_asked": float((probs.argmax(1) == asked).float().mean()),
                "recognised": float((probs.max(1).values > 0.9).float().mean()),
                "background": background(images),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        rows[name] = row
        print(f"[omni] {name}: {json.dumps(row)}", file=sys.stderr, flush=True)
    result = {
        "command": "python -m benchmarks.omni " + shlex.join(argv),
        "machine": machine("cpu"),
        "date": date.today().isoformat(),
        "num": args.num,
        "seed": args.seed,
        "hold": list(hold),
        "test_background": real,
        "runs": rows,
    }
    stem = args.out_dir / ("omni-samplers" + "".join(f"-hold-{n}" for n in hold))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    head = " | ".join(f"{a}: class asked / recognised / background" for a in SAMPLER_ARMS)
    held = f", {', '.join(hold)} held at nothing known" if hold else ", every other modality with a head generated"
    lines = [
        f"Command: `{result['command']}` ({where_run(result['machine'], result['date'])}); label given{held},"
        f" {args.num} samples, the MNIST-CNN (ccexam) reading them; background: share of pixels > {BLACK}"
        f" ({real:.3f} in the test digits); eps MSE on {args.num} test digits at t = {EPS_T}.",
        "",
        f"| run | encoded flags | eps MSE, label in z_t | eps MSE, nothing in z_t | {head} |",
        "|---|---|---|---|" + "---|" * len(SAMPLER_ARMS),
    ]
    for name, r in rows.items():
        arms = " | ".join(
            f"{r[a]['class_asked']:.3f} / {r[a]['recognised']:.3f} / {r[a]['background']:.3f}" for a in SAMPLER_ARMS
        )
        flags = "yes" if r["encoded_flags"] else "no"
        lines.append(f"| {name} | {flags} | {r['eps_mse_label']:.4f} | {r['eps_mse_nothing']:.4f} | {arms} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def cmd_table(args, argv: list[str]) -> dict:
    shipped = json.loads((args.out_dir / "shipped.json").read_text())
    scores = {m["name"]: m["scores"] for m in shipped["models"]}
    if args.omni not in scores:
        raise SystemExit(f"{args.omni} is not scored in {args.out_dir / 'shipped.json'}: run benchmarks.shipped score")
    rows = compare(scores[args.omni], scores)
    result = {
        "command": "python -m benchmarks.omni " + shlex.join(argv),
        "omni": args.omni,
        "rows": rows,
        "models": {
            m["name"]: {k: m.get(k) for k in ("step", "parameters", "train_minutes")} for m in shipped["models"]
        },
    }
    (args.out_dir / "omni.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"Command: `{result['command']}` (from the scores of `python -m benchmarks.shipped score`).",
        "",
        "| task score | mnist-omni | specialist | its score | goal | met | better |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        goal = "within 1 point" if r["rule"] == "share" else "within 1.2x"
        yn = lambda b: "" if b is None else "yes" if b else "no"  # noqa: E731
        lines.append(
            f"| {r['task']} | {_v(r['omni'], 4)} | {r['specialist']} | {_v(r['specialist_score'], 4)} | {goal} | "
            f"{yn(r['met'])} | {yn(r['better'])} |"
        )
    (args.out_dir / "omni.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.omni", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("anytoany", help="any subset known, the rest generated: checked and scored")
    p.add_argument("--run", default="mnist-omni", help="a shipped name or a run directory (default mnist-omni)")
    p.add_argument("--num", type=int, default=100, help="test digits per question (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default=None, help="default: the run's")
    p.add_argument("--steps", type=int, default=None, help="default: the run's")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p = sub.add_parser("samplers", help="label given: the samplers, and eps with and without its encoding")
    p.add_argument("--runs", default="mnist-omni,mnist-label-m", help="shipped names or run directories")
    p.add_argument("--num", type=int, default=32, help="samples per sampler and test digits for eps (default 32)")
    p.add_argument("--hold", default="", help="modalities held at nothing known, comma-separated (default none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p = sub.add_parser("table", help="the omni model beside its specialists, from shipped.json")
    p.add_argument("--omni", default="mnist-omni")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    return ap


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from mtdiff.errors import MtdiffError

    try:
        commands = {"anytoany": cmd_anytoany, "samplers": cmd_samplers, "table": cmd_table}
        return commands[args.command](args, argv)
    except MtdiffError as e:
        raise SystemExit(f"benchmarks.omni {args.command}: error: {e}") from None


if __name__ == "__main__":
    main()
