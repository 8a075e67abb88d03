"""``mtdiff serve``: the local web app on a run (:mod:`mtdiff.app`; gradio, ``pip install "mtdiff[app]"``)."""

from __future__ import annotations

from .args import add_device, nonnegative_int

__all__ = ["add_parsers", "COMMANDS"]


def port(text: str) -> int:
    """argparse type: a TCP port, 0 for any free one."""
    value = nonnegative_int(text)
    if value > 65535:
        import argparse

        raise argparse.ArgumentTypeError(f"expected a port in [0, 65535], got {text}")
    return value


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "serve",
        help='a local web app on a run: generate, restore, classify, translate (needs pip install "mtdiff[app]")',
    )
    p.add_argument(
        "--run",
        default=None,
        help="run directory or shipped model's name (default: mnist-label-m where shipped, else a shipped model "
        "with a label head)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port, default=7860, help="TCP port (default 7860; 0: any free port)")
    add_device(p)


def cmd_serve(args) -> int:
    from ..app import require_gradio, serve

    require_gradio()  # before the run is loaded: the one-line message first
    from ..app import default_run
    from ..runs import load_run

    run = load_run(args.run or default_run(), device=args.device, precision=args.precision)
    serve(run, args.host, args.port)
    return 0


COMMANDS = {"serve": cmd_serve}
