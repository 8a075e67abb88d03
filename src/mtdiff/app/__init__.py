"""``mtdiff serve``: a local web app (gradio) on a run's Python API, its tabs chosen by the run's modalities.

    from mtdiff.app import serve
    serve("mnist-label-m", port=7860)          # http://127.0.0.1:7860; the same tasks through gradio_client

:mod:`.convert` turns what a page holds (drawings, uploads, painted holes) into model inputs, :mod:`.tasks` runs
the tabs' tasks on a :class:`~mtdiff.runs.Run` (both without gradio), :mod:`.page` builds the page. gradio is an
optional extra (``pip install "mtdiff[app]"``), imported only when a page is built.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from ..errors import InputError, MtdiffError
from .optional import INSTALL, require_gradio

__all__ = ["serve", "launch", "default_run", "require_gradio", "free_port", "INSTALL"]

# The shipped model the app opens where it is shipped. Not mnist-omni yet: with the page's default sampler
# (DPM-Solver++, 20 steps) it draws the class asked (0.875) but on speckled backgrounds, from the representation
# it generates alongside (docs/RESULTS.md "One model, every modality"); open it with --run mnist-omni.
DEFAULT = "mnist-label-m"


def default_run() -> str:
    """The shipped model the app opens without ``--run``: ``DEFAULT`` where shipped, else the first with a label
    head (classify), else the first."""
    from ..modalities import MODALITY_KINDS
    from ..runs import read_run_config
    from ..shipped import WEIGHTS_DIR, shipped_names

    names = shipped_names()
    if not names:
        raise InputError("no shipped model in this installation: give --run DIR (a run directory of mtdiff train)")
    if DEFAULT in names:
        return DEFAULT

    def classifies(name: str) -> bool:
        try:
            mods = read_run_config(WEIGHTS_DIR / name).modalities.values()
        except MtdiffError:
            return False
        kinds = [MODALITY_KINDS.get(mc.kind) for mc in mods]
        return any(k is not None and k.value == "class" and k.has_head for k in kinds)

    return next((n for n in names if classifies(n)), names[0])


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch(run: Any, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True, tests=None):
    """Build the page of ``run`` (a :class:`~mtdiff.runs.Run`) and serve it on ``host:port``, one request at a
    time (gradio's queue); ``block``: until Ctrl-C, else return the gradio app (``.close()`` stops it)."""
    gr = require_gradio()
    from .page import CSS, build, theme
    from .tasks import Tasks

    demo = build(Tasks(run, tests))
    demo.queue(default_concurrency_limit=1)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        show_error=True,
        quiet=True,
        prevent_thread_lock=not block,
        ssr_mode=False,
        mcp_server=False,
        inbrowser=False,
        footer_links=["api"],
        theme=theme(gr),
        css=CSS,
    )
    return demo


def serve(run: str | Any | None = None, host: str = "127.0.0.1", port: int = 7860, *, device: str = "cpu") -> None:
    """Serve the app on ``run`` (a run directory, a shipped model's name or a loaded run; None:
    :func:`default_run`) until Ctrl-C. Only this machine can reach the default host."""
    require_gradio()
    from ..runs import Run, load_run

    if not isinstance(run, Run):
        run = load_run(run or default_run(), device=device)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: serving on {host}: every machine that can reach this one can use the app (it has no login)",
            file=sys.stderr,
        )
    port = port or free_port(host if host != "0.0.0.0" else "127.0.0.1")
    demo = launch(run, host, port, block=False)
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    print(f"mtdiff serve: {run.directory.name} at http://{shown}:{port} (Ctrl-C stops it)", flush=True)
    try:
        demo.block_thread()
    finally:
        demo.close()
