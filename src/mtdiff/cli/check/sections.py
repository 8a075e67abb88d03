"""The training sections of ``mtdiff check``: each returns (reason, details) on PASS, raises :class:`Skip`
(cannot apply here) or fails with any other exception."""

from __future__ import annotations

import math
import time
import traceback
import warnings
from pathlib import Path

import torch

from ...runs import read_log
from .common import (
    KINDS,
    Ctx,
    Skip,
    config,
    dataset,
    deterministic_switch,
    max_diff,
    patched,
    state,
    steps,
    train_run,
    trainer,
)


def section_kinds(ctx: Ctx):
    """Tiny training on the device for every modality kind (and the variants U, X, M, E)."""
    from ...pretrained.text import MissingTextEncoderError

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
    from ...train import trainer as tr_mod

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

    from ...models.unet import AttentionBlock

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
