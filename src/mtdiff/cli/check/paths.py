"""The sections of ``mtdiff check`` that go through other paths: DDP (one rank, and a torchrun job), torch.compile,
the CLI and the throughput benchmark."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import math
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import torch

from ...runs import read_log
from .common import Ctx, Skip, _no_estimate, config, has, max_diff, overrides, patched, state, steps, train_run, trainer


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

    from ... import pretrained as mtdiff_pretrained
    from ...distributed import World
    from ...pretrained.text import MissingTextEncoderError
    from ...train import trainer as tr_mod

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
        mtdiff_pretrained.load_text_encoder("all-MiniLM-L6-v2")
        encoder = mtdiff_pretrained.load_text_encoder
    except MissingTextEncoderError as e:
        note["text_encoder"] = f"stub (seeded vectors): {e}"
        encoder = lambda name: _StubTextEncoder()
    with patched(mtdiff_pretrained, "load_text_encoder", encoder):
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

    from ... import memory as mtdiff_memory
    from ...pretrained.text import MissingTextEncoderError
    from ..main import main as cli

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
            patched(mtdiff_memory, "estimate_sampling_memory", _no_estimate) if ctx.smoke else contextlib.nullcontext()
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
    try:  # the checkout's benchmarks package (run from the repository root)
        tp = importlib.import_module("benchmarks.throughput")
    except ImportError as e:
        raise Skip(
            f"benchmarks/throughput.py is not importable from {os.getcwd()} ({e}); run from the checkout"
        ) from None
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
    from ...train import trainer as tr_mod

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


def section_torchrun(ctx: Ctx):
    """2 processes through torchrun on 2 GPUs (NCCL): prepare-data, then a real job with init_world, main_first,
    each process's dropout masks and no_sync over micro-batches, checkpointed and resumed on 2 processes."""
    gpus = torch.cuda.device_count() if ctx.cuda else 0
    if gpus < 2:
        raise Skip(f"needs 2 GPUs for a 2-process torchrun job; this machine has {gpus} on {ctx.device}")
    import numpy as np

    from ...checkpoint import load_checkpoint

    rng, work = np.random.default_rng(0), ctx.work / "torchrun"
    for k in range(2):
        _pngs(work / "folder" / str(k), [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(16)])
    b = 4 * max(1, ctx.size.batch // 4)  # 2 processes x 2 micro-batches
    data = ["data.source=folder", f"data.root={work / 'folder'}", f"data.cache={work / 'cache'}"]
    sets = overrides(ctx, "mnist-masked-x", *data, "model.dropout=0.1", f"train.micro_batch={b // 4}", batch=b)
    sets = [x for x in sets if not x.startswith("train.device=")] + ["train.device=cuda"]
    argv = [f"--set={x}" for x in sets]
    mtdiff = [sys.executable, "-m", "mtdiff"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mtdiff"]
    out = work / "run"
    for cmd in (
        [*mtdiff, "prepare-data", "--config", "mnist-masked-x", *argv],
        [*torchrun, "train", "--config", "mnist-masked-x", "--out", str(out), "--quiet", *argv, "--set=train.steps=2"],
        [*torchrun, "train", "--out", str(out), "--resume", "--quiet", *argv, "--set=train.steps=4"],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=ctx.time_left(), check=False)
        if proc.returncode:
            raise AssertionError(f"{' '.join(cmd[2:5])} exited {proc.returncode}: {proc.stderr.strip()[-600:]}")
    ckpt = load_checkpoint(out)
    state, step = ckpt["state"], int(ckpt["meta"]["step"])
    if step != 4 or torch.equal(state["rng.cpu.rank0"], state["rng.cpu.rank1"]):
        raise AssertionError(f"step {step} (expected 4), per-rank generator states saved: {sorted(state)[:6]}")
    losses = [e["loss"] for e in read_log(out) if "loss" in e]
    if not losses or not all(math.isfinite(x) for x in losses):
        raise AssertionError(f"losses {losses}")
    return f"prepare-data, 2-process torchrun job and a resume on 2 processes: step {step}, loss {losses[-1]:.4f}", {
        "losses": losses
    }
