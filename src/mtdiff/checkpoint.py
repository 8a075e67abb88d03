"""Checkpoints: safetensors state dicts plus one JSON of metadata, written atomically.

Layout of ``RUN/checkpoints``::

    ckpt-<n>/model.safetensors   model parameters and buffers
    ckpt-<n>/ema.safetensors     EMA weights
    ckpt-<n>/state.safetensors   optimizer tensors and RNG states
    ckpt-<n>/meta.json           config, step, data position, optimizer hyper-parameters, SHA-256 of each file
    latest.json                  {"dir": "ckpt-<n>"}, replaced atomically after the directory is complete

A checkpoint is written into a temporary directory and renamed into place, so a kill at any
moment leaves the previous checkpoint intact. The step always comes from meta.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import MtdiffError
from .rundir import checkpoints_dir

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_steps",
    "latest_checkpoint",
    "has_checkpoints",
    "CheckpointError",
    "optimizer_to_flat",
    "optimizer_from_flat",
]

FORMAT = "mtdiff-checkpoint"
VERSION = 1
FILES = ("model.safetensors", "ema.safetensors", "state.safetensors")


class CheckpointError(MtdiffError, RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or from another format version."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state as flat tensors ``optim.<param>.<key>`` plus JSON-ready param groups."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    for group in opt.param_groups:  # moments in their parameter's memory layout (fused AdamW needs it)
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    opt.state[p][k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    meta: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write one checkpoint of a run atomically and keep only the ``keep`` newest. Returns its directory."""
    ckpt_root = checkpoints_dir(run_dir)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"ckpt-{step:09d}"
    tmp = ckpt_root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name, tensors in zip(FILES, (model, ema, state)):
            _save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / name)
            with open(tmp / name, "rb+") as f:
                os.fsync(f.fileno())
        full_meta = {
            "format": FORMAT,
            "version": VERSION,
            "step": int(step),
            **meta,
            "sha256": {name: _sha256(tmp / name) for name in FILES},
        }
        _write_json(tmp / "meta.json", full_meta)
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
        _write_json(ckpt_root / "latest.json", {"dir": final.name, "step": int(step)})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(ckpt_root, keep, protect=final)
    return final


def _save_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' ``save_file``; its I/O failures (a full disk: "os error 28") raised as the OSError they are."""
    try:
        save_file(tensors, str(path))
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from e


def _read_meta(d: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((d / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _complete(ckpt_root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of checkpoint directories with readable metadata, newest first."""
    out = []
    for d in ckpt_root.glob("ckpt-*"):
        meta = _read_meta(d)
        if meta is not None:
            out.append((int(meta["step"]), d))
    return sorted(out, reverse=True)


def _prune(ckpt_root: Path, keep: int, protect: Path) -> None:
    for _, d in _complete(ckpt_root)[keep:]:
        if d != protect:
            shutil.rmtree(d, ignore_errors=True)
    for d in ckpt_root.glob(".tmp-*"):
        shutil.rmtree(d, ignore_errors=True)


def has_checkpoints(run_dir: Path) -> bool:
    """Whether a run directory holds any checkpoint directory (complete or not: never overwrite one)."""
    return any(checkpoints_dir(run_dir).glob("ckpt-*"))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest.json`` points to, else the newest complete one, else None."""
    root = checkpoints_dir(run_dir)
    try:
        d = root / json.loads((root / "latest.json").read_text())["dir"]
        if _read_meta(d) is not None:
            return d
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = _complete(root) if root.is_dir() else []
    return found[0][1] if found else None


def _verify_and_load(d: Path) -> dict[str, Any]:
    meta = _read_meta(d)
    if meta is None:
        raise CheckpointError(f"{d}/meta.json is missing or not an mtdiff checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{d} has checkpoint format version {meta.get('version')}; this mtdiff reads version {VERSION}"
        )
    out: dict[str, Any] = {"meta": meta, "dir": d}
    for name in FILES:
        path = d / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        if _sha256(path) != meta["sha256"].get(name):
            raise CheckpointError(f"{path} does not match its SHA-256 in meta.json (corrupt or partly written)")
        out[name.split(".")[0]] = load_file(str(path))
    return out


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps of a run's complete checkpoints, oldest first."""
    return sorted(s for s, _ in _complete(checkpoints_dir(run_dir)))


def load_checkpoint(run_dir: Path, *, fallback: bool = True, step: int | None = None) -> dict[str, Any]:
    """Load and verify the latest checkpoint of a run (or the one of ``step``); with ``fallback``, a
    corrupt latest one is skipped (with a warning) in favour of the previous complete one.

    Returns {"meta", "dir", "model", "ema", "state"}.
    """
    import warnings

    root = checkpoints_dir(run_dir)
    if step is not None:
        found = [d for s, d in _complete(root) if s == step]
        if not found:
            raise CheckpointError(f"no checkpoint of step {step} in {root}; it holds steps {checkpoint_steps(run_dir)}")
        return _verify_and_load(found[0])
    first = latest_checkpoint(run_dir)
    if first is None:
        raise CheckpointError(f"no checkpoint in {root} (expected ckpt-*/meta.json written by mtdiff train)")
    candidates = [first] + [d for _, d in _complete(root) if d != first]
    errors = []
    for d in candidates if fallback else candidates[:1]:
        try:
            return _verify_and_load(d)
        except CheckpointError as e:
            errors.append(str(e))
            if fallback:
                warnings.warn(f"skipping checkpoint: {e}", stacklevel=2)
    raise CheckpointError("no usable checkpoint: " + "; ".join(errors))
