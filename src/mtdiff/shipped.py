"""Shipped weights: converged runs of the presets that come with the package, loaded by name.

    run = mtdiff.load_run("mnist-label-m")          # also: mtdiff sample --run mnist-label-m ...

Each shipped model is a folder ``mtdiff/weights/NAME/``::

    config.yaml        the run's resolved config (the same file a run directory holds)
    ema.safetensors    its EMA weights, the ones a run samples with (float16 where that samples the same)
    log.jsonl          its training log, thinned (one entry per 500 steps)
    card.json          the command that trained it, its step, a summary of its log, its scores, and the
                       SHA-256 of every other file (checked at every load)

A local directory of the same name always wins over a shipped name. ``python -m benchmarks.shipped`` makes
these folders from finished run directories, scores them and writes the scores into the cards.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .checkpoint import CheckpointError
from .rundir import CONFIG_FILE, LOG_FILE

__all__ = [
    "WEIGHTS_DIR",
    "CARD_FILE",
    "WEIGHTS_FILE",
    "FILES",
    "shipped_names",
    "locate",
    "read_card",
    "verify",
    "load_weights",
    "sha256",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"
CARD_FILE = "card.json"
WEIGHTS_FILE = "ema.safetensors"
FILES = (CONFIG_FILE, WEIGHTS_FILE, LOG_FILE)  # each checked against its SHA-256 in the card


def shipped_names() -> list[str]:
    """The names of the shipped models, sorted."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(d.name for d in WEIGHTS_DIR.iterdir() if (d / CARD_FILE).is_file())


def locate(name: str | Path) -> Path | None:
    """The folder of shipped model ``name``, checked against its card before anything in it is read (a
    :class:`CheckpointError` names a file that does not match), or None when nothing of that name is shipped."""
    text = str(name)
    if text not in shipped_names():
        return None
    verify(WEIGHTS_DIR / text)
    return WEIGHTS_DIR / text


def read_card(directory: Path) -> dict[str, Any]:
    """The card of a shipped model's folder."""
    path = Path(directory) / CARD_FILE
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is missing or not JSON ({e}); reinstall mtdiff") from None
    if not isinstance(card, dict) or not isinstance(card.get("sha256"), dict):
        raise CheckpointError(f"{path} is not a shipped model's card (no sha256 table); reinstall mtdiff")
    return card


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify(directory: Path) -> dict[str, Any]:
    """The card of ``directory`` after checking every file it lists against its SHA-256."""
    card = read_card(directory)
    for name in FILES:
        path = Path(directory) / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; reinstall mtdiff")
        if sha256(path) != card["sha256"].get(name):
            raise CheckpointError(
                f"{path} does not match its SHA-256 in {directory / CARD_FILE}: the file is corrupt or was "
                "changed; reinstall mtdiff (or retrain it with the card's command)"
            )
    return card


def load_weights(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(EMA weights as float32, card) of a shipped model's folder, checked."""
    card = verify(directory)
    try:
        weights = load_file(str(Path(directory) / WEIGHTS_FILE))
    except SafetensorError as e:
        raise CheckpointError(f"{Path(directory) / WEIGHTS_FILE}: {e}") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, card
