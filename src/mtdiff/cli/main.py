"""The ``mtdiff`` command: the parser, and one place where errors and Ctrl-C end a command.

A user error (:class:`mtdiff.errors.MtdiffError`, or a file that cannot be written) prints one line and
exits 2; Ctrl-C exits 130 (``train`` saves a checkpoint first and says how to resume). Neither shows a
traceback.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from ..errors import MtdiffError
from . import evaluate, generate, machine, serve, train
from .args import add_seed, positive_int

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mtdiff", description="MT-Diffusion: one diffusion model, several modalities.")
    sub = ap.add_subparsers(dest="command", required=True)
    train.add_parsers(sub)
    generate.add_parsers(sub)
    evaluate.add_parsers(sub)
    machine.add_parsers(sub)
    serve.add_parsers(sub)

    p = sub.add_parser("report", help="one self-contained HTML page about a run: samples, curves, schedule, metrics")
    p.add_argument(
        "--run",
        required=True,
        type=Path,
        help="run directory written by mtdiff train, or a shipped model's name (mtdiff models)",
    )
    p.add_argument("--out", type=Path, default=None, help="HTML file (default RUN/report.html)")
    p.add_argument("--num", type=positive_int, default=16, help="samples per generated section (default 16)")
    p.add_argument(
        "--steps", type=positive_int, default=50, help="sampler steps for the generated sections (default 50)"
    )
    add_seed(p)
    sub.add_parser("presets", help="list the config presets with their descriptions")
    p = sub.add_parser("models", help="list the shipped models (use one with --run NAME) with their scores")
    p.add_argument(
        "--check",
        action="store_true",
        help="also load each (checksums verified) and sample 16 images with DPM-Solver++ at 20 steps, timed",
    )
    return ap


COMMANDS = {**train.COMMANDS, **generate.COMMANDS, **evaluate.COMMANDS, **machine.COMMANDS, **serve.COMMANDS}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..train import TrainingInterrupted

    command = {**COMMANDS, "report": cmd_report, "presets": cmd_presets, "models": cmd_models}[args.command]
    try:
        return command(args)
    except TrainingInterrupted as e:
        print(f"mtdiff {args.command}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"\nmtdiff {args.command}: interrupted", file=sys.stderr)
        return 130
    except (
        MtdiffError,
        OSError,
    ) as e:  # OSError: a file that cannot be written (a full disk, a missing folder, permissions)
        print(f"mtdiff {args.command}: error: {e}", file=sys.stderr)
        return 2


def cmd_presets(args) -> int:
    """Each preset with its whole description (the comment lines at the top of its YAML file), and whether
    converged weights of it are shipped."""
    from ..config import presets
    from ..shipped import shipped_names

    shipped = set(shipped_names())
    for name, path in sorted(presets().items()):
        lines = path.read_text().splitlines()
        about = " ".join(
            line.lstrip("# ").strip()
            for line in lines[: next((i for i, x in enumerate(lines) if not x.startswith("#")), len(lines))]
        )
        print(name + (f"  [shipped weights: --run {name}]" if name in shipped else ""))
        print(textwrap.fill(about, width=100, initial_indent="    ", subsequent_indent="    "))
    return 0


def cmd_models(args) -> int:
    """Each shipped model: its step and size, the command that trained it and its scores."""
    from ..shipped import WEIGHTS_DIR, read_card, shipped_names

    names = shipped_names()
    if not names:
        print("no shipped models in this installation")
    for name in names:
        card = read_card(WEIGHTS_DIR / name)
        print(f"{name}  (preset {card['preset']}, step {card['step']}, {card['parameters'] / 1e6:.2f}M parameters)")
        print(f"    trained by: {card['command']}")
        scores = ", ".join(
            f"{k} {_fmt_score(v)}"
            for k, v in card.get("scores", {}).items()
            if isinstance(v, (int, float)) and not k.startswith(("float32_", "half_")) and k not in _SETTINGS
        )
        print(
            textwrap.fill(f"scores: {scores or 'not scored yet'}", 100, initial_indent="    ", subsequent_indent="    ")
        )
        if args.check:
            print(f"    check: {_check_model(name)}")
    return 0


def _check_model(name: str) -> str:
    """Load shipped model ``name`` and sample 16 images from it: what it took, or an error."""
    import time

    import torch

    from ..runs import load_run

    t0 = time.perf_counter()
    run = load_run(name)
    images = run.sample(16, sampler="dpm-solver", steps=20, seed=0).images
    if not bool(torch.isfinite(images).all()):
        raise MtdiffError(f"{name}: the samples are not finite")
    return f"loaded and sampled 16 images {tuple(images.shape[1:])} in {time.perf_counter() - t0:.2f} s"


_SETTINGS = ("num", "seed", "head_guidance", "caption_guidance", "restore_images", "head_test_digits")  # not scores


def _fmt_score(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def cmd_report(args) -> int:
    import json

    from ..report import write_report

    path = write_report(args.run, args.out, num=args.num, steps=args.steps, seed=args.seed)
    print(json.dumps({"report": str(path)}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
