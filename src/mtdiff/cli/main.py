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

from . import evaluate, generate, train
from .args import add_seed, positive_int

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mtdiff", description="MT-Diffusion: one diffusion model, several modalities.")
    sub = ap.add_subparsers(dest="command", required=True)
    train.add_parsers(sub)
    generate.add_parsers(sub)
    evaluate.add_parsers(sub)

    p = sub.add_parser("report", help="one self-contained HTML page about a run: samples, curves, schedule, metrics")
    p.add_argument("--run", required=True, type=Path, help="run directory written by mtdiff train")
    p.add_argument("--out", type=Path, default=None, help="HTML file (default RUN/report.html)")
    p.add_argument("--num", type=positive_int, default=16, help="samples per generated section (default 16)")
    p.add_argument(
        "--steps", type=positive_int, default=50, help="sampler steps for the generated sections (default 50)"
    )
    add_seed(p)
    sub.add_parser("presets", help="list the config presets with their descriptions")
    return ap


COMMANDS = {**train.COMMANDS, **generate.COMMANDS, **evaluate.COMMANDS}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..errors import MtdiffError
    from ..train import TrainingInterrupted

    command = {**COMMANDS, "report": cmd_report, "presets": cmd_presets}[args.command]
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
    """Each preset with its whole description (the comment lines at the top of its YAML file)."""
    from ..config import presets

    for name, path in sorted(presets().items()):
        lines = path.read_text().splitlines()
        about = " ".join(
            line.lstrip("# ").strip()
            for line in lines[: next((i for i, x in enumerate(lines) if not x.startswith("#")), len(lines))]
        )
        print(name)
        print(textwrap.fill(about, width=100, initial_indent="    ", subsequent_indent="    "))
    return 0


def cmd_report(args) -> int:
    import json

    from ..report import write_report

    path = write_report(args.run, args.out, num=args.num, steps=args.steps, seed=args.seed)
    print(json.dumps({"report": str(path)}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
