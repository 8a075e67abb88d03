"""Loading a trained run: its directory (or a shipped model's folder), its weights, its device."""

from __future__ import annotations

from pathlib import Path

import torch

from .build import build_model, build_process, build_space_map
from .checkpoint import CheckpointError, load_checkpoint
from .errors import InputError
from .precision import PRECISIONS, autocast_dtype
from .rundir import CONFIG_FILE, read_run_config
from .shipped import WEIGHTS_FILE, load_weights, locate, shipped_names
from .trained import Run

__all__ = ["load_run", "resolve_device"]


def load_run(
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    ema: bool = True,
    step: int | None = None,
    precision: str = "fp32",
) -> Run:
    """Load a trained run for inference (the EMA weights by default; the latest checkpoint, or ``step``'s).
    ``run_dir``: a run directory of ``mtdiff train``, or the name of a shipped model (``mnist-label-m``; a
    directory of that name wins). ``precision``: the autocast of the network's forward passes in every task
    ("auto", "bf16", "fp16" or "fp32", as ``train.precision``); the samplers' arithmetic and every returned
    tensor stay fp32."""
    device = resolve_device(device)
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    run_dir, shipped = _locate_run(run_dir)
    cfg = read_run_config(run_dir)
    if shipped:
        if not ema or step is not None:
            raise InputError(f"{run_dir.name} is a shipped model: it holds only the EMA weights of its last step")
        weights, card = load_weights(run_dir)
        at, source = int(card["step"]), run_dir / WEIGHTS_FILE
    else:
        ckpt = load_checkpoint(run_dir, step=step)
        weights, at, source = ckpt["ema" if ema else "model"], int(ckpt["meta"]["step"]), ckpt["dir"]
    model = build_model(cfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{source}: weights do not fit the model of {run_dir / CONFIG_FILE}: {e}") from None
    return Run(
        cfg,
        model.to(device).eval(),
        build_process(cfg),
        at,
        run_dir,
        build_space_map(cfg, device),
        autocast_dtype(precision, device),
        shipped,
    )


def _locate_run(run: str | Path) -> tuple[Path, bool]:
    """(folder, shipped) for ``run``: a directory that exists, else a shipped model's name."""
    path = Path(run)
    if path.is_dir():
        return path, False
    folder = locate(run)
    if folder is not None:
        return folder, True
    names = ", ".join(shipped_names()) or "none in this installation"
    raise InputError(
        f"{run} is not an mtdiff run directory (nothing there) nor the name of a shipped model (shipped: {names})"
    )


def resolve_device(name: str | torch.device, *, what: str = "device") -> torch.device:
    """A device that exists on this machine (``auto``: the GPU where there is one), or an
    :class:`InputError` naming ``what`` and the devices there are."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(f"{what}: unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{what}={name!r}, but this torch build sees no CUDA GPU; use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"{what}={name!r}, but there are {torch.cuda.device_count()} CUDA GPUs")
    elif device.type != "cpu":
        raise InputError(f"{what}={name!r} is not supported; use cpu, cuda, cuda:N or auto")
    return device
