"""The training loop (Algorithm 2): fused AdamW with warm-up, clipping, EMA, autocast (bf16 on GPU),
atomic checkpoints with exact resume, JSONL + TensorBoard logs, sample grids; many processes
through torchrun (DDP) and gradient accumulation.

A step never waits for the device: a non-finite gradient skips the update on the device (the
fused optimizer's ``found_inf``, the mechanism GradScaler uses) and is counted there; the host
reads the counters, and the loss, only every ``train.log_every`` steps.

Every process draws the whole global batch's randomness (data, t, noise, masks) from the same
generator and trains on its own rows, so K processes with global batch B take the same steps as
one process with B (up to the order of floating-point sums), and a run resumes on any K.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from ..build import build_model, build_process, build_space_map, load_data, resolve_class_names
from ..checkpoint import (
    has_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
)
from ..config import Config, ConfigError, to_dict
from ..data.cache import cache_dir
from ..data.imageset import ImageSet
from ..data.loader import BatchStream
from ..distributed import init_world, main_first, wrap_ddp
from ..errors import MtdiffError
from ..loading import resolve_device
from ..loss import mt_loss
from ..memory import estimate_training_memory
from ..models import MTModel
from ..precision import autocast, autocast_dtype
from ..process import MTProcess, Prediction
from ..rundir import CONFIG_FILE, LOG_FILE, SAMPLES_DIR, TB_DIR, checkpoints_dir
from ..sampling import generate_joint
from ..viz import save_grid
from .ema import EMA
from .latents import PREFIX as LATENT
from .latents import diffusion_data as latent_diffusion_data
from .latents import latent_sources, with_latents

__all__ = ["Trainer", "TrainingError", "TrainingInterrupted", "autocast_dtype"]


class TrainingError(MtdiffError, RuntimeError):
    """Training cannot go on (e.g. the loss kept being NaN); the last good checkpoint is saved."""


class TrainingInterrupted(MtdiffError):
    """Ctrl-C (SIGINT) stopped training at a step boundary; a checkpoint of that step is saved."""


@contextmanager
def _stop_requests():
    """Ctrl-C asks the loop to stop at the next step boundary (``flag["stop"]``); a second Ctrl-C
    interrupts at once. Outside the main thread, where no handler can be set, nothing changes."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def use_deterministic_kernels() -> None:
    """Deterministic kernels only (an op without one raises), so that a resumed GPU run is bit-identical."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it before its first call
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


class Trainer:
    """Train ``cfg`` into ``run_dir``. ``resume=True`` continues the latest checkpoint exactly."""

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path,
        *,
        resume: bool = False,
        data: ImageSet | None = None,
        progress: bool = True,
    ):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        _check_resume(self.run_dir, resume)
        self.world, device = init_world(cfg.train.device)
        self.device = resolve_device(device, what="train.device")
        t = cfg.train
        self.local_batch, self.micro_batch = _shares(t.batch_size, t.micro_batch, self.world.size)
        self.amp_dtype = autocast_dtype(t.precision, self.device)
        self.data = self._training_data(data)
        self.latent = build_space_map(cfg, self.device)  # frozen, outside the model and checkpoints
        if cfg.data.autoencoder and cfg.data.latent_scale is None:  # record the VAE's scale in the run config
            cfg.data.latent_scale = self.latent.scale
        self.data = self._cache_latents(self.data)
        if t.deterministic:
            use_deterministic_kernels()
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # static shapes: each convolution is tuned once
        self.process, self.model, self.initialised = self._build_model(resume)
        self.ema = EMA(self.model, t.ema_decay)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=True)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        mine = slice(self.world.rank * self.local_batch, (self.world.rank + 1) * self.local_batch)
        self.stream = BatchStream(  # this process gathers and converts only its own rows
            self.data, t.batch_size, seed=t.seed, device=self.device, rows=mine if self.world.distributed else None
        )
        self.gen = torch.Generator(self.device).manual_seed(t.seed)  # t, noise and masks
        self.step = 0
        self._rank_rng: dict[str, torch.Tensor] = {}
        self.streak = torch.zeros((), device=self.device)  # consecutive non-finite steps, on the device
        self.skipped_on_device = torch.zeros((), device=self.device)
        if resume:
            self._restore()
        self.memory = self._estimate_memory()
        if t.compile:  # in place (parameter names stay unchanged); static shapes, so it compiles once
            self.model.backbone.compile(dynamic=False)
        self.net = self.model  # what the loss calls: the model, or its DDP wrapper
        if self.world.distributed:
            self.net = wrap_ddp(self.model, self.device)
        if self.world.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / CONFIG_FILE).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    def _training_data(self, data: ImageSet | None) -> ImageSet:
        """``data``, else the config's data set (under torchrun a cached folder is only mapped: mtdiff
        prepare-data decodes it, so no process waits for another's decoding at a barrier with a timeout, and a
        missing entry stops every process at once); checked against the batch size, its class names recorded."""
        cfg = self.cfg
        prepared = self.world.distributed
        data = data if data is not None else main_first(self.world, lambda: load_data(cfg, prepared=prepared))
        if cfg.train.batch_size > len(data):
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} exceeds the {len(data)} images of {data.name!r}"
            )
        resolve_class_names(cfg, data)
        return data

    def _cache_latents(self, data: ImageSet) -> ImageSet:
        """``data`` with its images' latents encoded once (``data.latent_cache``, :mod:`.latents`): under torchrun
        rank 0 encodes them into the data cache and the others map them."""
        d = self.cfg.data
        if not (d.autoencoder and d.latent_cache):
            return data
        sources, directory = latent_sources(self.cfg, data), cache_dir(d.cache)
        show = self.progress and self.world.main

        def encode() -> ImageSet:
            return with_latents(data, self.latent, sources, directory=directory, device=self.device, progress=show)

        return main_first(self.world, encode)

    def _build_model(self, resume: bool) -> tuple[MTProcess, MTModel, dict[str, Any] | None]:
        """(process, model on the device, where its weights were initialised from): the initial weights the same
        on every process, dropout then seeded per process; the frozen encoders loaded unless resuming."""
        t = self.cfg.train
        torch.manual_seed(t.seed)  # initial weights: the same on every process
        process = build_process(self.cfg)
        model = build_model(self.cfg)
        torch.manual_seed(t.seed + 1_000_003 * self.world.rank)  # dropout: each process its own masks
        initialised = None
        if not resume:
            model.prepare()  # frozen encoders; restored otherwise
            if t.init_from:
                initialised = init_from(model, Path(t.init_from))
        model.to(self.device)
        if t.channels_last:
            model.to(memory_format=torch.channels_last)
        return process, model, initialised

    def _estimate_memory(self):
        """The memory estimate (eager passes at batch 2 and 4, before compiling); advisory, so it never keeps a
        run from starting (None, with a warning, when it fails)."""
        try:
            return estimate_training_memory(self)
        except Exception as e:
            warnings.warn(f"no memory estimate ({type(e).__name__}: {e}); training goes on", stacklevel=3)
            return None

    @property
    def skipped(self) -> int:
        """Steps skipped because the gradient was not finite (reads the device counter)."""
        return int(self.skipped_on_device)

    # -- checkpoints ---------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, opt_meta = optimizer_to_flat(self.opt)
        tensors.update(self._rank_rng)
        tensors["rng.cpu"] = torch.get_rng_state()
        tensors["rng.gen"] = self.gen.get_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {
            "config": to_dict(self.cfg),
            "data": self.stream.state_dict(),
            "optimizer": opt_meta,
            "ema_updates": self.ema.updates,
            "scaler": self.scaler.state_dict(),
            "counters": {"skipped_nonfinite": self.skipped, "nonfinite_streak": int(self.streak)},
        }
        return tensors, meta

    def save(self) -> Path | None:
        """Write a checkpoint (the main process only; the others return None)."""
        self._rank_rng = self._gather_rank_rng()  # a collective: every process takes part
        if not self.world.main:
            return None
        tensors, meta = self._state()
        try:
            return save_checkpoint(
                self.run_dir,
                step=self.step,
                model=self.model.state_dict(),
                ema=self.ema.state_dict(),
                state=tensors,
                meta=meta,
                keep=self.cfg.train.keep_checkpoints,
            )
        except OSError as e:  # disk full, quota, permissions: the partial write is removed, older ones are intact
            raise self._write_failed(e, f"the checkpoint of step {self.step} to {checkpoints_dir(self.run_dir)}") from e

    def _gather_rank_rng(self) -> dict[str, torch.Tensor]:
        """Every process's dropout generators (the CPU's and its device's) as ``rng.cpu.rankR`` and
        ``rng.cuda.rankR``: each process draws its own masks, and a resumed one must go on drawing them."""
        mine = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.device)
        states = [mine] * self.world.size
        if self.world.distributed:
            torch.distributed.all_gather_object(states, mine)
        return {f"rng.{k}.rank{r}": v for r, s in enumerate(states) for k, v in s.items()}

    def _restore_rank_rng(self, state: dict[str, torch.Tensor], step: int) -> None:
        """This process's own dropout generators; a rank the checkpoint did not have (it was written by fewer
        processes, or before per-rank states were saved) reseeds from train.seed, its rank and the step."""
        rank = self.world.rank
        cpu = state.get(f"rng.cpu.rank{rank}", state["rng.cpu"] if rank == 0 else None)
        if cpu is None:
            torch.manual_seed(self.cfg.train.seed + 1_000_003 * rank + 7_919 * step)
        else:
            torch.set_rng_state(cpu)
        cuda = state.get(f"rng.cuda.rank{rank}", state.get("rng.cuda") if rank == 0 else None)
        if self.device.type == "cuda" and cuda is not None and cpu is not None:
            torch.cuda.set_rng_state(cuda, self.device)

    def _write_failed(self, e: OSError, what: str) -> TrainingError:
        """The error that stops a run whose files cannot be written: what failed, why, and what is intact."""
        previous = latest_checkpoint(self.run_dir)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        return TrainingError(
            f"could not write {what}: {e.strerror or e}; {kept}. Free space (or fix the directory), "
            f"then continue with: mtdiff train --out {self.run_dir} --resume"
        )

    def _restore(self) -> None:
        ckpt = load_checkpoint(self.run_dir)
        meta, state = ckpt["meta"], ckpt["state"]
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"], meta["ema_updates"])
        optimizer_from_flat(
            self.opt, {k: v.to(self.device) for k, v in state.items() if k.startswith("optim.")}, meta["optimizer"]
        )
        self.stream.load_state_dict(meta["data"])
        self._restore_rank_rng(state, int(meta["step"]))
        if state["rng.gen"].numel() == self.gen.get_state().numel():
            self.gen.set_state(state["rng.gen"])
        else:  # saved on another device type, whose generator state has another form
            saved_on = "a GPU" if "rng.cuda" in state else "the CPU"
            warnings.warn(
                f"the checkpoint was written on {saved_on} and this run is on {self.device}: the random "
                f"stream (t, noise, masks) restarts from train.seed and the step, so the run continues "
                f"but not bit-identically",
                stacklevel=3,
            )
            self.gen.manual_seed(self.cfg.train.seed + 1_000_003 * int(meta["step"]))
        if meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        self.step = int(meta["step"])
        before = meta.get("config", {}).get("train", {}).get("steps", self.cfg.train.steps)
        if before != self.cfg.train.steps and self.cfg.train.lr_schedule != "constant":
            warnings.warn(
                f"train.steps is now {self.cfg.train.steps}, was {before} when this run started: the "
                f"{self.cfg.train.lr_schedule} learning-rate decay from step {self.step} on follows the new "
                f"length, so the run differs from one trained for {self.cfg.train.steps} steps from the start",
                stacklevel=3,
            )
        counters = meta.get("counters", {})
        self.skipped_on_device.fill_(counters.get("skipped_nonfinite", 0))
        self.streak.fill_(counters.get("nonfinite_streak", 0))

    # -- one step ------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Linear warm-up over ``train.warmup_steps``, then constant (the paper's) or a cosine or linear
        decay that reaches 0 at ``train.steps``."""
        t = self.cfg.train
        warm = min(1.0, (step + 1) / max(t.warmup_steps, 1))
        if t.lr_schedule == "constant" or step < t.warmup_steps:
            return t.lr * warm
        done = min(1.0, (step - t.warmup_steps + 1) / max(t.steps - t.warmup_steps, 1))
        decay = 0.5 * (1 + math.cos(math.pi * done)) if t.lr_schedule == "cosine" else 1 - done
        return t.lr * decay

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimizer step (Algorithm 2) on this process's rows of the global batch: the step's random draws
        (:meth:`draw`), then the :meth:`loss` of each micro-batch, backward under autocast and gradient scaling
        (DDP synchronises the last micro-batch only), then the update.

        Returns the loss terms and the gradient norm as device tensors; a non-finite gradient norm
        means the update was skipped.
        """
        batch = self.stream.next()  # the global batch: every random draw is made for all of it, on every process
        drawn = self.draw(batch)
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step)
        self.opt.zero_grad(set_to_none=True)
        mine = self.world.rank * self.local_batch
        chunks = range(mine, mine + self.local_batch, self.micro_batch)
        share = self.micro_batch / self.local_batch
        terms: dict[str, torch.Tensor] = {}
        for i, start in enumerate(chunks):
            last = i == len(chunks) - 1
            sync = nullcontext() if last or not self.world.distributed else self.net.no_sync()
            with sync, self._autocast():
                loss, parts = self.loss(batch, drawn, slice(start, start + self.micro_batch))
                self.scaler.scale(loss * share).backward()
            for k, v in {"loss": loss.detach(), **parts}.items():
                terms[k] = terms.get(k, 0.0) + v * share
        return {**terms, "grad_norm": self._update()}

    # -- the objective: another one overrides draw and loss ------------------------------
    def draw(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The step's random draws for every row of the global ``batch``, from ``self.gen`` in a fixed order
        (every process draws the same, so K processes take the steps of one and a resumed run continues
        exactly): the modality data X of this process's rows (their masks drawn for the whole batch), the time
        indices, the noise, and the condition and encoding drop masks."""
        t, model = self.cfg.train, self.model
        mine, b = self.world.rank * self.local_batch, batch["image"].shape[0]
        return {  # evaluated in this order
            "x": model.derive(batch, self.gen, slice(mine, mine + self.local_batch)),  # this process's rows only
            "t": Prediction.of(model, self.process).timesteps(b, self.gen, self.device),
            "noise": torch.randn((b, *model.z_shape), generator=self.gen, device=self.device),
            "cond_drop": self._drop_masks(b, t.cond_drop_prob, model.conditioned, t.cond_drop_all_prob),  # guidance
            "enc_drop": self._drop_masks(b, t.enc_drop_prob, tuple(model.modalities), t.enc_drop_all_prob),  # image->x
        }

    def loss(
        self, batch: dict[str, torch.Tensor], drawn: dict[str, Any], rows: slice
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of the micro-batch ``rows`` (rows of the global ``batch``, within this process's share) and
        its terms to log, run under the run's autocast: the multi-task loss of Eq. 6 with the draws of
        :meth:`draw` (the drop masks applied). A trainer with another objective overrides this and
        :meth:`draw`, and keeps the micro-batches, DDP, autocast, gradient scaling, the non-finite skip and exact
        resume of :meth:`train_step`."""
        mine = self.world.rank * self.local_batch
        own = slice(rows.start - mine, rows.stop - mine)  # the same rows within this process's share
        pixels = {k: v[rows] for k, v in batch.items() if k == "image" or k.startswith(LATENT)}  # cached latents too
        z0, x = self.diffusion_data(pixels, {n: v[own] for n, v in drawn["x"].items()})
        return mt_loss(
            self.model,
            self.process,
            z0,
            x,
            t=drawn["t"][rows],
            noise=drawn["noise"][rows],
            lam=self.cfg.diffusion.lam,
            inputs=_apply_drop(self.model, x, drawn["cond_drop"], rows),
            encoded=_apply_drop(self.model, x, drawn["enc_drop"], rows),
            net=self.net,
        )

    def _autocast(self):
        return autocast(self.device, self.amp_dtype)

    def _update(self) -> torch.Tensor:
        """Unscale, clip, step and EMA; a non-finite gradient norm skips the step on the device. Returns the norm.

        With DDP the gradients are already averaged, so every process reaches the same decision.
        """
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.opt)
        clip = self.cfg.train.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else math.inf)
        bad = (~torch.isfinite(grad_norm)).float()
        if self.scaler.is_enabled():
            self.scaler.step(self.opt)  # fp16: the scaler skips non-finite steps itself
            self.scaler.update()
        else:
            self.opt.grad_scale, self.opt.found_inf = None, bad  # fused AdamW leaves everything as it was
            try:
                self.opt.step()
            finally:
                del self.opt.grad_scale, self.opt.found_inf
        self.ema.update(self.model, weight=1 - bad)
        self.streak.copy_((self.streak + 1) * bad)
        self.skipped_on_device.add_(bad)
        return grad_norm.detach()

    def diffusion_data(
        self, batch: dict[str, torch.Tensor], data: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """z_0 and the modality data X of pixel images and their derived data: the images (z_0 and
        image modalities) go through the space map (identity, or the frozen autoencoder's encoder:
        latent diffusion, Appendix E.1), in full precision also inside the loss's autocast; the batch's
        cached latents (``data.latent_cache``) are taken as they are."""
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            return latent_diffusion_data(self.latent, batch, data, self.model.modalities)

    def _drop_masks(self, batch: int, prob: float, names, all_prob: float = 0.0) -> dict[str, torch.Tensor] | None:
        """Per sample of the global batch, True where each modality of ``names`` becomes "nothing known",
        with probability ``prob`` each, and all of them at once with probability ``all_prob``; None when both
        are 0 (nothing is drawn from the generator then; a probability of 0 draws nothing for itself)."""
        if prob <= 0 and all_prob <= 0:
            return None
        names = [n for n in self.model.modalities if n in names]
        none = torch.zeros(batch, dtype=torch.bool, device=self.device)
        drop = {
            n: torch.rand(batch, generator=self.gen, device=self.device) < prob if prob > 0 else none for n in names
        }
        if all_prob > 0:
            every = torch.rand(batch, generator=self.gen, device=self.device) < all_prob
            drop = {n: d | every for n, d in drop.items()}
        return drop

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        """Train to ``train.steps``; returns the last logged metrics (averaged over processes). A file
        that cannot be written (a full disk: logs, grids or checkpoints) stops the run with a
        :class:`TrainingError` naming it and the latest intact checkpoint."""
        try:
            with _stop_requests() as stop:
                return self._run(stop)
        except OSError as e:
            raise self._write_failed(e, e.filename or f"the run's files in {self.run_dir}") from e

    def _run(self, stop: dict[str, bool]) -> dict[str, float]:
        t, main = self.cfg.train, self.world.main
        log_path = self.run_dir / LOG_FILE
        if main and self.step > 0:  # resumed: what a killed run logged after its checkpoint is redone exactly
            _truncate_jsonl(log_path, self.step)
        writer = _tensorboard(self.run_dir / TB_DIR, purge_step=self.step or None) if main else None
        if main:
            if self.progress and self.memory is not None:
                print(self.memory.summary(), file=sys.stderr, flush=True)
            if self.step == 0:
                extra = {"memory_estimate_bytes": self.memory.total()} if self.memory else {}
                if self.initialised:
                    extra["init_from"] = self.initialised
                self._log_prior(log_path, writer, **extra)
        bar = tqdm(
            total=t.steps, initial=self.step, disable=not (self.progress and main), desc="train", dynamic_ncols=True
        )
        last: dict[str, float] = {}
        acc: dict[str, torch.Tensor] = {}
        n_acc, t0 = 0, time.perf_counter()
        while self.step < t.steps:
            terms = self.train_step()
            good = torch.isfinite(terms["grad_norm"])
            for k, v in terms.items():  # stays on the device: no host sync until logging
                acc[k] = acc.get(k, 0.0) + torch.where(good, v, 0.0)
            acc["good"] = acc.get("good", 0.0) + good.float()
            self.step += 1
            n_acc += 1
            bar.update(1)
            log_step = self.step % t.log_every == 0 or self.step == t.steps
            if self.world.distributed and log_step:  # every process stops at the same step
                acc["stop"] = torch.tensor(float(stop["stop"]), device=self.device)
            if log_step:
                acc = self.world.mean(acc)
                stop["stop"] = bool(acc.pop("stop", stop["stop"]))
                good_steps = float(acc.pop("good"))
                dt = time.perf_counter() - t0
                last = {k: float(v) / max(good_steps, 1e-12) for k, v in acc.items()}
                last.update(
                    step=self.step,
                    lr=self.lr_at(self.step - 1),
                    img_per_s=n_acc * t.batch_size / dt,
                    skipped_nonfinite=self.skipped,
                )
                if main:
                    _append_jsonl(log_path, last)
                    for k, v in last.items():
                        if k != "step" and writer is not None:
                            writer.add_scalar(f"train/{k}", v, self.step)
                    bar.set_postfix(loss=f"{last['loss']:.4f}")
                acc, n_acc, t0 = {}, 0, time.perf_counter()
                self._stop_if_diverged()
            if self.step % t.ckpt_every == 0 or self.step == t.steps:
                self._stop_if_diverged()
                self.save()
            if main and t.sample_every > 0 and (self.step % t.sample_every == 0 or self.step == t.steps):
                self.sample_grid(self.run_dir / SAMPLES_DIR / f"step-{self.step:07d}.png")
            if stop["stop"] and (log_step or not self.world.distributed) and self.step < t.steps:
                self._interrupted(bar)
        bar.close()
        if writer is not None:
            writer.close()
        self.world.barrier()  # the last checkpoint is on disk for every process
        return last

    def _interrupted(self, bar) -> None:
        """Save this step (unless just saved) and stop with how to continue."""
        bar.close()
        path = latest_checkpoint(self.run_dir) if self.step % self.cfg.train.ckpt_every == 0 else self.save()
        self.world.barrier()
        raise TrainingInterrupted(
            f"interrupted at step {self.step}: the checkpoint {path} is saved; continue with: "
            f"mtdiff train --out {self.run_dir} --resume"
        )

    def _stop_if_diverged(self) -> None:
        """Stop with the last good weights saved once ``train.max_nonfinite`` steps in a row were skipped."""
        streak = int(self.streak)
        if streak >= self.cfg.train.max_nonfinite:
            path = self.save()
            where = (
                f"the last good weights are saved in {path}" if path else "the last good weights are saved by rank 0"
            )
            raise TrainingError(
                f"loss was NaN/Inf for {streak} consecutive steps at step {self.step} (max_nonfinite="
                f"{self.cfg.train.max_nonfinite}); skipped steps change nothing, so {where}. Lower train.lr, "
                f"raise train.warmup_steps, set train.grad_clip, or use train.precision=fp32 (or bf16 instead of fp16)."
            )

    def _log_prior(self, log_path: Path, writer, **extra) -> None:
        """L0 = KL(q(z_T | z_0, X) || N(0, I)) on one batch: whether the schedules end at the prior."""
        batch = BatchStream(
            self.data, min(256, len(self.data)), seed=self.cfg.train.seed + 1, device=self.device, prefetch=False
        ).next()
        g = torch.Generator(self.device).manual_seed(0)
        with torch.no_grad():
            z0, data = self.diffusion_data(batch, self.model.derive(batch, g))
            kl = self.process.prior_kl(z0, self.model.encode(data)).mean().item()
        entry = {"step": 0, "prior_kl": kl, **self.process.signal_summary(), **extra}
        _append_jsonl(log_path, entry)
        if writer is not None:
            writer.add_scalar("schedule/prior_kl", kl, 0)

    @torch.no_grad()
    def sample_grid(self, path: Path) -> Path:
        """Joint samples from the EMA model with the config's sampler (a fixed seed per run)."""
        s = self.cfg.sample
        g = torch.Generator(self.device).manual_seed(self.cfg.train.seed + 12345)
        with self._autocast():  # bf16 on a GPU: the other processes wait for this grid
            state = generate_joint(
                self.ema.model, self.process, batch=s.num, generator=g, device=self.device, **s.kwargs()
            )
        return save_grid(self.latent.decode(state.z), path)


def _check_resume(run_dir: Path, resume: bool) -> None:
    """A new run goes into a directory without checkpoints; ``resume`` needs one with them."""
    has_ckpt = has_checkpoints(run_dir)
    if has_ckpt and not resume:
        raise ConfigError(f"{run_dir} already holds checkpoints; pass --resume to continue it or choose another --out")
    if resume and not has_ckpt:
        raise ConfigError(f"--resume: {run_dir} holds no checkpoint to resume")


def _shares(batch_size: int, micro_batch: int, world_size: int) -> tuple[int, int]:
    """(rows per process, rows per micro-batch) of the global batch; they must divide evenly."""
    if batch_size % world_size:
        raise ConfigError(
            f"train.batch_size={batch_size} is the global batch and must be divisible by the {world_size} processes"
        )
    local = batch_size // world_size
    micro = micro_batch or local
    if local % micro:
        raise ConfigError(
            f"train.micro_batch={micro_batch} must divide each process's share of the batch "
            f"({batch_size} / {world_size} processes = {local})"
        )
    return local, micro


def _apply_drop(model, data: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None, rows: slice):
    """``data`` with the rows marked in ``masks`` replaced by each modality's "nothing known" value."""
    if masks is None:
        return None
    return {n: model.modalities[n].drop(x, masks[n][rows]) if n in masks else x for n, x in data.items()}


def _append_jsonl(path: Path, entry: dict[str, Any]) -> None:
    """Append one JSON line. A line a full disk left unfinished is ended first; a failure names the file."""
    line = json.dumps({k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in entry.items()}) + "\n"
    try:
        with open(path, "ab+") as f:
            if f.seek(0, 2):  # not empty: does the last line end?
                f.seek(-1, 2)
                if f.read(1) != b"\n":
                    line = "\n" + line
            f.write(line.encode())
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from e


def init_from(model: torch.nn.Module, source: Path) -> dict[str, Any]:
    """Load into ``model`` the weights run ``source`` samples with (the EMA of its latest checkpoint), for a run that
    starts from them at step 0 with a fresh optimizer. Tensors the source lacks (a head it did not have) keep their
    initialisation and are named in the result; a tensor of another shape, or a source with nothing in common, is
    a ConfigError that names ``train.init_from``."""
    if not has_checkpoints(source):
        raise ConfigError(f"train.init_from: {source} holds no checkpoint (expected a run directory of mtdiff train)")
    ckpt = load_checkpoint(source)
    theirs, ours = ckpt["ema"], model.state_dict()
    shared = [k for k in ours if k in theirs]
    wrong = [
        f"{k} {tuple(theirs[k].shape)} (here {tuple(ours[k].shape)})"
        for k in shared
        if theirs[k].shape != ours[k].shape
    ]
    if wrong or not shared:
        why = f"tensors of another shape: {', '.join(wrong[:5])}" if wrong else "no tensor of this model's in it"
        raise ConfigError(f"train.init_from: the weights of {ckpt['dir']} do not fit this model's config ({why})")
    model.load_state_dict({**ours, **{k: theirs[k] for k in shared}})
    return {
        "checkpoint": str(ckpt["dir"]),
        "step": int(ckpt["meta"]["step"]),
        "new": [k for k in ours if k not in theirs],  # kept their initialisation
        "unused": [k for k in theirs if k not in ours],
    }


def _truncate_jsonl(path: Path, step: int) -> None:
    """Drop the entries logged after ``step`` (and lines a kill cut short): a run resumed from ``step`` logs
    those steps again, so the log stays the history of one run, each step once. Replaced atomically."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except (ValueError, AttributeError):
            continue
    if len(kept) < len(lines):
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _tensorboard(path: Path, purge_step: int | None = None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but logs must not kill a run
        return None
    try:
        return SummaryWriter(str(path), purge_step=purge_step)
    except OSError as e:  # its writer thread failed (a full disk): name the folder
        raise OSError(e.errno, e.strerror, str(path)) from e
