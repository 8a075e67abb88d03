"""The paper's comparisons rerun at MNIST scale: Tables 1, 2, 4 and Figure 6 of Chen et al. (ICLR 2024).

    python benchmarks/paper_claims.py --scale smoke|cpu|gpu [--seeds 0,1,2] [--runs runs/paper_claims] [--out-dir ...]

Every arm has the same backbone, training steps, batch, learning rate and seed; every evaluation the same
sampler, steps and seed. Arms are trained with ``mtdiff.train.Trainer`` into ``RUNS/seed-<s>/<arm>`` and reused
when that directory holds a finished run of the same resolved config (a partial one is resumed), so an
interrupted benchmark continues where it stopped, arm by arm. Writes ``paper_claims.json`` and
``paper_claims.md`` (``paper_claims-SCALE.*`` for scales other than cpu: tables laid out like the paper's, its
numbers beside ours, and whether each claim holds) and, for scales with a curve, ``-curve.png``.

``--tables table4,figure6`` trains and evaluates only the arms of those tables. Results add up: a run whose
settings (all but the seeds) match the JSON already in ``--out-dir`` puts its tables and seeds beside the ones
there, so a scale too long for one sitting can be run table by table and seed by seed, on different days and
machines (each part's machine and day are kept in ``provenance``); a run of other settings replaces the file.

With several ``--seeds`` every arm is trained and evaluated once per seed (the seed of its initial weights,
data order, noise and of its evaluation); the tables show mean ± standard deviation over the seeds, and a
claim holds only when its difference points the paper's way and exceeds the spread of that difference
(the two sides' standard deviations added in quadrature); one the other way beyond the spread does not
hold; anything nearer is "within the spread". With one seed the spread is unknown and the verdict is the
direction alone, marked "1 seed".

Scales: ``smoke`` (8 channels, 3 steps, 16 samples: checks that the pipeline runs, numbers mean nothing),
``cpu`` (the MNIST presets' backbone, 16 channels x (1, 2, 4), 1000 steps at batch 32, 1000 samples with
25 DDIM steps) and ``gpu`` (64 channels, 20k steps, 5k samples, on CUDA). The cpu scale is sized for one
hour on 2 idle CPU cores: 9 arms x 1000 steps x 32 images at 120-150 img/s is 32-40 min of training (the
classifier-only M arm costs about half a step), and the evaluations are about 225k image forward passes
at 300-500 img/s, 8-12 min, plus about 2 min of scoring and loading. The estimate printed up front comes
from a few training steps of every arm and a sampling pass measured on the spot (``--estimate-only``
prints it and exits); on a busy machine ``--threads 1`` can be several times faster than two threads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from common import machine

from mtdiff.build import build_model, load_data
from mtdiff.checkpoint import has_checkpoints, latest_checkpoint
from mtdiff.config import Config, load_config, to_dict
from mtdiff.data.masking import apply_mask, make_mask
from mtdiff.evaluate import joint_images, translate
from mtdiff.metrics.quality import sample_quality
from mtdiff.metrics.task import calibration, masked_errors, perceptual_distance
from mtdiff.runs import Run, load_run, read_run_config, resolve_device
from mtdiff.sampling import timesteps
from mtdiff.train import Trainer

RESULTS = Path(__file__).parent / "results"

# ------------------------------------------------------------------------- the paper's numbers (Chen et al., ICLR 2024)

# Table 2, ImageNet (1M iterations, 5k samples): IS, FID, sFID, precision, recall, as printed.
PAPER_TABLE2 = {
    "ddpm": ("ADM (un-cond)", (15.64, 23.22, 16.53, 0.57, 0.60)),
    "masked-u": ("MT-Diffusion-U", (23.77, 26.00, 25.22, 0.57, 0.55)),
    "masked-x": ("MT-Diffusion-X", (34.53, 9.85, 15.78, 0.68, 0.64)),
    "label-m": ("MT-Diffusion-M", (15.66, 33.92, 21.63, 0.54, 0.55)),
    "label-e": ("MT-Diffusion-E", (11.86, 41.00, 22.37, 0.48, 0.43)),
}
TABLE2_METRICS = ("IS", "FID", "sFID", "precision", "recall")
# Table 1, ImageNet: LPIPS of (original, restored) for masks of m patches.
PATCHES = (5, 10, 15, 20)
PAPER_TABLE1 = {
    "clean_masked": (0.311, 0.414, 0.461, 0.491),
    "sdedit": (0.400, 0.466, 0.497, 0.513),
    "repaint": None,
    "mt_x": (0.035, 0.068, 0.099, 0.133),
}
# Table 4, Cityscapes labels -> photo: per-pixel accuracy, per-class accuracy, class IoU.
PAPER_TABLE4 = {"seg2img-single": (0.72, 0.54, 0.32), "seg2img": (0.95, 0.85, 0.70)}
SEG_METRICS = ("pixel_accuracy", "class_accuracy", "class_iou")
SEG_PREFIX = "generated_by_threshold_mnist_cnn_ccexam/"

# ---------------------------------------------------------------------------- arms and scales

# Single-task conditional diffusion: the mask stays a backbone input (-X) but leaves the forward process
# (w_t = 0, so alpha~_t = 0 and train.enc_drop_prob changes nothing) and its head is not trained (lambda = 0).
SINGLE_TASK = ["modalities.mask.aggregation=constant", "modalities.mask.weight=0.0", "diffusion.lam=0.0"]
ARMS = {
    "ddpm": ("mnist-ddpm", []),
    "masked-u": ("mnist-masked-u", []),
    "masked-x": ("mnist-masked-x", []),
    "label-m": ("mnist-label-m", []),
    "label-e": ("mnist-label-e", []),
    "seg2img": ("mnist-seg2img", []),
    "seg2img-single": ("mnist-seg2img", SINGLE_TASK),
}
CLASSIFIER_ONLY = {"label-m-classifier-only": "label-m", "label-e-classifier-only": "label-e"}
# The arms each table reads; ``--tables`` trains and evaluates only the arms of the tables it names.
TABLES = {
    "table2": ("ddpm", "masked-u", "masked-x", "label-m", "label-e"),
    "table1": ("ddpm", "masked-x"),
    "table4": ("seg2img", "seg2img-single"),
    "figure6": ("label-m", "label-m-classifier-only", "label-e", "label-e-classifier-only"),
}


def arms_of(tables: list[str]) -> list[str]:
    """The arms ``tables`` read, each once, in the order of ``ARMS`` (classifier-only arms last)."""
    return [arm for arm in [*ARMS, *CLASSIFIER_ONLY] if any(arm in TABLES[t] for t in tables)]


TITLES = {"table2": "Table 2", "table1": "Table 1", "table4": "Table 4", "figure6": "Figure 6"}
NAMES = {
    "ddpm": "single-task DDPM",
    "masked-u": "MT-Diffusion-U",
    "masked-x": "MT-Diffusion-X",
    "label-m": "MT-Diffusion-M",
    "label-e": "MT-Diffusion-E",
    "seg2img": "MT-Diffusion (-X)",
    "seg2img-single": "single-task conditional diffusion",
    "label-m-classifier-only": "the M network trained only to classify",
    "label-e-classifier-only": "the E network trained only to classify",
    "clean_masked": "clean vs masked (the input itself)",
    "sdedit": "SDEdit-style (DDPM arm, from t = T/2)",
    "repaint": "RePaint-style (DDPM arm, no resampling)",
    "mt_x": "MT-Diffusion-X (restore)",
}


@dataclass(frozen=True)
class Scale:
    overrides: tuple[str, ...]  # applied to every preset
    device: str
    sample_steps: int  # DDIM (eta 0) steps of every sampler
    num_samples: int  # Table 2
    num_restore: int  # Table 1, per mask size
    num_translate: int  # Table 4
    num_classify: int | None  # Figure 6 (None: the whole test split)
    batch: int  # images per sampling batch
    threads: int | None = None  # torch CPU threads (None: torch's default, one per core)
    curve: int = 0  # earlier checkpoints per arm scored for the convergence curve (0: none)
    curve_num: int = 200  # samples (masks, test images x 5) per curve point


def _backbone(channels, mult, blocks, attention, heads):
    return (
        f"model.channels={channels}",
        f"model.channel_mult={list(mult)}",
        f"model.num_res_blocks={blocks}",
        f"model.attention_resolutions={list(attention)}",
        f"model.num_heads={heads}",
        "train.sample_every=0",
    )


SCALES = {
    "smoke": Scale(
        overrides=_backbone(8, (1, 2), 1, (16,), 2)
        + (
            "train.steps=3",
            "train.batch_size=8",
            "train.warmup_steps=1",
            "train.log_every=1",
            "train.ckpt_every=3",
            "train.device=cpu",
        ),
        device="cpu",
        sample_steps=4,
        num_samples=16,
        num_restore=8,
        num_translate=8,
        num_classify=64,
        batch=16,
        threads=1,
        curve=1,
        curve_num=8,
    ),  # tiny networks: one thread is fastest on busy cores
    "cpu": Scale(
        overrides=_backbone(16, (1, 2, 4), 1, (8,), 4)
        + (
            "train.steps=1000",
            "train.batch_size=32",
            "train.lr=2e-3",
            "train.warmup_steps=100",
            "train.ema_decay=0.999",
            "train.log_every=50",
            "train.ckpt_every=200",
            "train.device=cpu",
        ),
        device="cpu",
        sample_steps=25,
        num_samples=1000,
        num_restore=200,
        num_translate=200,
        num_classify=None,
        batch=250,
    ),
    "gpu": Scale(
        overrides=_backbone(64, (1, 2, 4), 2, (8, 16), 4)
        + (
            "train.steps=20000",
            "train.batch_size=128",
            "train.lr=2e-4",
            "train.warmup_steps=500",
            "train.ema_decay=0.9999",
            "train.log_every=100",
            "train.ckpt_every=2000",
            "train.device=cuda",
        ),
        device="cuda",
        sample_steps=50,
        num_samples=5000,
        num_restore=1000,
        num_translate=1000,
        num_classify=None,
        batch=500,
    ),
}
# The cpu scale trained until the quality curves flatten (the curve shows whether they did): 8x the steps, with
# the lr decay spread over the whole run and a checkpoint kept at each curve point. Resumable arm by arm: rerun
# the same command to continue (time in docs/RESULTS.md, "The paper's claims at convergence").
SCALES["converged"] = replace(
    SCALES["cpu"],
    overrides=tuple(o for o in SCALES["cpu"].overrides if not o.startswith("train.steps=")) + ("train.steps=8000",),
    curve=4,
)


def arm_config(arm: str, scale: Scale, seed: int, extra: list[str]) -> Config:
    """The resolved config of an arm: its preset, the scale's backbone and training, one seed for all (and with
    a curve, a checkpoint kept at each of its points)."""
    preset, own = ARMS[CLASSIFIER_ONLY.get(arm, arm)]
    cfg = load_config(preset, [*own, *scale.overrides, f"train.seed={seed}", *extra])
    if scale.curve:
        every = math.ceil(cfg.train.steps / (scale.curve + 1))
        cfg = load_config(
            preset,
            [*own, *scale.overrides, f"train.seed={seed}", *extra]
            + [f"train.ckpt_every={every}", f"train.keep_checkpoints={scale.curve + 2}"],
        )
    return cfg


# ---------------------------------------------------------------------------- training (reused when finished)

MARKER = "paper_claims_arm.json"


def _flat(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def differing(a: dict, b: dict) -> list[str]:
    """The keys (flattened: "train.lr") whose values differ between two nested dicts."""
    a, b = _flat(a), _flat(b)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def backbone_text(cfg: Config) -> str:
    """The arms' backbone in words, as the results' settings name it."""
    m = cfg.model
    return (
        f"U-Net {m.channels} channels x {tuple(m.channel_mult)}, {m.num_res_blocks} res block(s), "
        f"attention at {tuple(m.attention_resolutions)}"
    )


def run_state(run_dir: Path, cfg: Config, objective: str) -> int:
    """Steps already trained in ``run_dir`` (0 if none). A run there with another config or objective is an
    error: the benchmark never mixes settings or overwrites a run."""
    if not has_checkpoints(run_dir):
        return 0
    marker = json.loads((run_dir / MARKER).read_text()) if (run_dir / MARKER).is_file() else {}
    diff = differing(to_dict(read_run_config(run_dir)), to_dict(cfg))
    if diff or marker.get("objective") != objective:
        why = f"config differs in {', '.join(diff)}" if diff else f"objective {marker.get('objective')}"
        raise SystemExit(f"{run_dir} holds another run ({why}); use another --runs directory or remove it")
    ckpt = latest_checkpoint(run_dir)
    return int(json.loads((ckpt / "meta.json").read_text())["step"]) if ckpt else 0


class ClassifierOnly(Trainer):
    """Figure 6's baseline: the same network, optimiser, warm-up, clipping, EMA, batches and seed as a
    Trainer run, but the loss is only the label head's cross-entropy on clean images in inverse mode
    (z_t at t = 0, the label as "nothing known", as ``mtdiff.sampling.inverse`` builds it)."""

    def train_step(self):
        model, name = self.model, next(n for n, m in self.model.modalities.items() if m.kind == "label")
        batch = self.stream.next()
        z0, y = batch["image"], batch["label"]
        t0 = torch.zeros(z0.shape[0], dtype=torch.long, device=self.device)
        unknown = model.init_data([name], z0.shape[0], generator=self.gen, device=self.device)
        noise = torch.randn(z0.shape, generator=self.gen, device=self.device)
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step)
        with self._autocast():
            zt = self.process.q_sample(z0, t0, model.encode(unknown), noise)
            loss = F.cross_entropy(model(zt, t0, unknown)[1][name].float(), y)
        grad_norm = self.optimize(loss)
        return None if grad_norm is None else {"loss": loss.detach(), "grad_norm": grad_norm}


def train_arm(arm: str, cfg: Config, run_dir: Path, data, *, progress: bool, objective: str | None = None) -> dict:
    """Train (or resume, or reuse) one arm with its objective (default: the arm's own); returns what was done and
    how long it took."""
    objective = objective or ("classifier-only" if arm in CLASSIFIER_ONLY else "diffusion")
    done = run_state(run_dir, cfg, objective)
    status = "reused" if done >= cfg.train.steps else "resumed" if done else "trained"
    t0 = time.perf_counter()
    if status != "reused":
        print(f"[paper_claims] {arm}: {status} from step {done} to {cfg.train.steps}", flush=True)
        trainer = (ClassifierOnly if objective == "classifier-only" else Trainer)(
            cfg, run_dir, resume=done > 0, data=data, progress=progress
        )
        (run_dir / MARKER).write_text(json.dumps({"arm": arm, "objective": objective}))
        trainer.run()
    return {
        "preset": ARMS[CLASSIFIER_ONLY.get(arm, arm)][0],
        "objective": objective,
        "status": status,
        "steps": cfg.train.steps,
        "seconds": round(time.perf_counter() - t0, 1),
    }


# ---------------------------------------------------------------------------- time estimate


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, repeats: int, device) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call (robust to a busy machine)."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def calibrate(cfgs: dict[str, Config], ddpm: Config, data, batch: int) -> dict:
    """Measured now: seconds per training step of each arm in ``cfgs`` (median of 3 after a warm-up) and seconds
    per image of one sampling forward pass of the DDPM network (batches of ``batch``)."""
    per_step = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm, cfg in cfgs.items():
            tr = (ClassifierOnly if arm in CLASSIFIER_ONLY else Trainer)(
                cfg, Path(tmp) / arm, data=data, progress=False
            )
            per_step[arm] = _timed(tr.train_step, 3, tr.device)
    device = resolve_device(ddpm.train.device)
    model = build_model(ddpm).to(device).eval()
    z = torch.randn(batch, *model.z_shape, device=device)
    tt = torch.full((batch,), ddpm.diffusion.timesteps // 2, dtype=torch.long, device=device)
    forward = _timed(lambda: model.predict(z, tt, {}), 3, device) / batch
    return {"sec_per_step": per_step, "sec_per_forward_image": forward}


def estimate(
    scale: Scale,
    remaining: dict[str, int],
    speed: dict,
    num_test: int,
    evaluations: int = 1,
    tables: tuple[str, ...] = tuple(TABLES),
) -> dict[str, float]:
    """Seconds for the remaining training steps of each arm (x its measured seconds per step) and for all
    ``evaluations`` of ``tables`` (one per seed: network evaluations x measured seconds per image forward, and
    the FID-family scoring), plus 30 s for data and reference features."""
    s = scale.sample_steps
    forwards = {
        "table2": 5 * scale.num_samples * s,
        "table1": len(PATCHES) * scale.num_restore * (2 * s + s // 2),  # MT-X, RePaint, SDEdit from T/2
        "table4": 2 * scale.num_translate * (s + 2),  # + the own-head reads
        "figure6": 4 * (scale.num_classify or num_test),
    }
    out = {"training": sum(n * speed["sec_per_step"].get(arm, 0.0) for arm, n in remaining.items())}
    out.update({k: evaluations * n * speed["sec_per_forward_image"] for k, n in forwards.items() if k in tables})
    if "table2" in tables:
        out["table2_scoring"] = evaluations * 5 * (2 + scale.num_samples / 100)  # FID family: ~12 s per 1000 samples
    out["total"] = sum(out.values()) + 30
    return out


# ---------------------------------------------------------------------------- evaluation: one function per table


def sample_kw(scale: Scale, seed: int) -> dict:
    """The sampler of every arm (the run's start and clipping): DDIM (eta 0) with the scale's steps, one seed."""
    return {"sampler": "ddim", "steps": scale.sample_steps, "eta": 0.0, "seed": seed}


def generation_scores(run: Run, scale: Scale, num: int, test, extractor, seed: int, cache_dir: Path) -> dict:
    """FID-family scores of ``num`` joint samples from scratch (-X from the complete mask) against ``test``."""
    images = joint_images(run, num, batch=scale.batch, **sample_kw(scale, seed))
    return sample_quality(images, test, extractor, seed=seed, cache_dir=cache_dir)


def translation_scores(run: Run, scale: Scale, num: int, test, seed: int, **kw) -> dict:
    """Class mask -> image for the first ``num`` test masks, scored as ``mtdiff.evaluate.translate`` does (``kw``:
    more of ``Run.translate``'s options, e.g. guidance)."""
    _, scores = translate(run, test, modality="mask", num=num, **sample_kw(scale, seed), **kw)
    scores.pop("columns")
    return scores


def table2_generation(runs: Path, scale: Scale, test, extractor, seed: int, device) -> dict:
    """Table 2 (training efficiency): FID-family scores of joint samples from scratch (-X from the complete
    mask) of each arm, all trained for the same steps, against the whole test split."""
    rows = {
        arm: generation_scores(
            load_run(runs / arm, device=device), scale, scale.num_samples, test, extractor, seed, runs / "eval"
        )
        for arm in PAPER_TABLE2
    }
    return {
        "rows": rows,
        "paper": {a: dict(zip(TABLE2_METRICS, v)) for a, (_, v) in PAPER_TABLE2.items()},
        "paper_rows": {a: name for a, (name, _) in PAPER_TABLE2.items()},
    }


@torch.no_grad()
def ddim_single_task(
    run: Run,
    z: torch.Tensor,
    ts: list[int],
    *,
    generator,
    clip: bool = True,
    known: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDIM (eta 0) over the descending time indices ``ts`` for a model without modalities (the DDPM arm).
    With ``known`` and ``keep``: RePaint-style replacement (Lugmayr et al. 2022, no resampling jumps), the
    known region of z_t is set to the known pixels noised to t (q_sample) before each step."""
    process = run.process
    for t, s in zip(ts, ts[1:] + [-1]):
        tt = torch.full((z.shape[0],), t, dtype=torch.long, device=z.device)
        if known is not None:
            noise = torch.randn(z.shape, generator=generator, device=z.device)
            z = keep * process.q_sample(known, tt, {}, noise) + (1 - keep) * z
        eps, _ = run.model.predict(z, tt, {})
        ab_t = float(process.alphas_cumprod[t])
        ab_s = float(process.alphas_cumprod[s]) if s >= 0 else 1.0
        z0 = (z - (1 - ab_t) ** 0.5 * eps) / ab_t**0.5
        if clip:
            z0 = z0.clamp(-1, 1)
            eps = (z - ab_t**0.5 * z0) / (1 - ab_t) ** 0.5
        z = ab_s**0.5 * z0 + (1 - ab_s) ** 0.5 * eps
    return z


def sdedit(ddpm: Run, masked, scale: Scale, seed: int, device, *, t_start: int | None = None) -> torch.Tensor:
    """SDEdit (Meng et al., 2022) with the DDPM arm: the masked images noised to ``t_start`` (default T/2) and
    denoised by DDIM in the scale's share of steps (half of them from T/2); the whole image is regenerated."""
    T, s = ddpm.process.num_timesteps, scale.sample_steps
    t = T // 2 if t_start is None else t_start
    g = torch.Generator(device).manual_seed(seed)
    noisy = ddpm.process.q_sample(
        masked, torch.full((len(masked),), t, device=device), {}, torch.randn(masked.shape, generator=g, device=device)
    )
    return ddim_single_task(ddpm, noisy, timesteps(t + 1, max(1, s * t // T)), generator=g)


def paste_known(masked: torch.Tensor, keep: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``z`` with the known pixels (``keep`` = 1) of ``masked`` pasted back."""
    return keep * masked + (1 - keep) * z


def _restorations(ddpm: Run, mtx: Run, x, masked, keep, scale: Scale, seed: int, device) -> dict[str, torch.Tensor]:
    """The four rows of Table 1 for one mask size; every restoration keeps the known pixels exactly."""
    T, s = ddpm.process.num_timesteps, scale.sample_steps

    def paste(z):
        return paste_known(masked, keep, z)

    g = torch.Generator(device).manual_seed(seed)
    repaint = ddim_single_task(
        ddpm, torch.randn(x.shape, generator=g, device=device), timesteps(T, s), generator=g, known=masked, keep=keep
    )
    mt_x = mtx.restore(x, keep, **sample_kw(scale, seed)).restored
    edited = sdedit(ddpm, masked, scale, seed, device)
    return {"clean_masked": masked, "sdedit": paste(edited), "repaint": paste(repaint), "mt_x": mt_x}


def table1_inputs(test, scale: Scale, seed: int, device) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Table 1's test images and, per number of patches, their known-pixel masks (1 = known), one for every row."""
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[: scale.num_restore]
    x = test.to_float(idx).to(device)
    return x, {
        k: make_mask(
            "random", len(x), x.shape[-1], generator=torch.Generator().manual_seed(seed + k), num_patches=k
        ).to(x)
        for k in PATCHES
    }


def sdedit_scores(ddpm: Run, scale: Scale, test, extractor, seed: int, *, paste: bool = True, t_start=None) -> dict:
    """Table 1's SDEdit row alone (``mask-K``: the perceptual distance for K patches), its known pixels pasted back
    as in Table 1 or left as SDEdit regenerated them; ``t_start`` as ``sdedit``'s."""
    x, keeps = table1_inputs(test, scale, seed, ddpm.device)
    out = {}
    for k, keep in keeps.items():
        masked = apply_mask(x, keep)
        edited = sdedit(ddpm, masked, scale, seed, ddpm.device, t_start=t_start)
        edited = paste_known(masked, keep, edited) if paste else edited
        ((_, out[f"mask-{k}"]),) = perceptual_distance(edited, x, extractor=extractor).items()
    return out


def table1_restoration(runs: Path, scale: Scale, test, extractor, lpips, seed: int, device) -> dict:
    """Table 1 (masked-image recovery): perceptual distance and masked-pixel MSE between test images and their
    restorations from masks of 5, 10, 15, 20 random patches."""
    ddpm, mtx = load_run(runs / "ddpm", device=device), load_run(runs / "masked-x", device=device)
    x, keeps = table1_inputs(test, scale, seed, device)
    rows: dict[str, dict] = {row: {} for row in PAPER_TABLE1}
    metric = None
    for k, keep in keeps.items():
        outs = _restorations(ddpm, mtx, x, apply_mask(x, keep), keep, scale, seed, device)
        for row, out in outs.items():
            ((metric, dist),) = perceptual_distance(out, x, lpips=lpips, extractor=None if lpips else extractor).items()
            errors = masked_errors(out, x, keep)
            rows[row][f"mask-{k}"] = {
                "perceptual": dist,
                "mse_masked": errors["mse_masked"],
                "mse_unmasked": errors["mse_unmasked"],
            }
    return {
        "perceptual_metric": metric,
        "n_per_mask": len(x),
        "sdedit_t": ddpm.process.num_timesteps // 2,
        "rows": rows,
        "paper": {r: dict(zip((f"mask-{k}" for k in PATCHES), v)) for r, v in PAPER_TABLE1.items() if v},
    }


def table4_translation(runs: Path, scale: Scale, test, seed: int, device) -> dict:
    """Table 4 (image translation): class mask -> image; the generated digits are segmented by threshold and the
    MNIST-CNN (ccexam) classifier and scored against the mask (per-pixel / per-class accuracy, class IoU)."""
    rows = {}
    for arm in PAPER_TABLE4:
        run = load_run(runs / arm, device=device)
        scores = translation_scores(run, scale, scale.num_translate, test, seed)
        rows[arm] = {
            **{m: scores[SEG_PREFIX + m] for m in SEG_METRICS},
            "all": scores,
            "alpha_tilde_max": float(run.process.alpha_tilde["mask"].abs().max()),  # 0: single task
            "lam": run.config.diffusion.lam,
        }
    return {
        "rows": rows,
        "paper": {a: dict(zip(SEG_METRICS, v)) for a, v in PAPER_TABLE4.items()},
        "segmented_by": "threshold + MNIST-CNN (ccexam)",
    }


@torch.no_grad()
def head_probs(run: Run, test, num: int | None, seed: int, *, t: int = 0, batch: int = 500) -> tuple:
    """Label-head probabilities of the first ``num`` test images (None: all) in inverse mode at time index ``t``,
    batched and seeded as ``mtdiff.evaluate.classify``, and their labels."""
    n = len(test) if num is None else min(num, len(test))
    g = run.generator(seed)
    probs = [
        run.classify(test.to_float(torch.arange(i, min(i + batch, n))), t=t, generator=g).double().cpu()
        for i in range(0, n, batch)
    ]
    return torch.cat(probs), test.labels[:n]


def head_scores(run: Run, test, num: int | None, seed: int, *, t: int = 0) -> dict:
    """Accuracy, calibration and NLL of the label head (``head_probs``)."""
    probs, labels = head_probs(run, test, num, seed, t=t)
    return {
        **calibration(probs, labels),
        "nll": float(-probs.gather(1, labels[:, None]).clamp_min(1e-12).log().mean()),
    }


def figure6_classification(runs: Path, scale: Scale, test, seed: int, device) -> dict:
    """Figure 6 (classification): test accuracy and calibration of the M and E label heads against the same
    networks trained only to classify, for the same steps."""
    rows = {
        arm: head_scores(load_run(runs / arm, device=device), test, scale.num_classify, seed)
        for arm in TABLES["figure6"]
    }
    return {"rows": rows, "method": "label head, inverse mode, t = 0"}


CURVE_METRIC = {"table2": "FID", "table1": "FID", "table4": "class IoU", "figure6": "accuracy"}  # per table


def convergence(runs: Path, scale: Scale, test, extractor, seed: int, device, tables: list[str]) -> dict:
    """Quality against training steps, from the checkpoints each arm kept, in the metric of each of ``tables`` the
    arm is in: FID of ``curve_num`` joint samples (Tables 2 and 1), class IoU of ``curve_num`` translations
    (Table 4), label-head accuracy on 5 x ``curve_num`` test images (Figure 6; the label arms of Table 2 get both
    when both tables run). Small samples: compare points of one arm, not with the tables."""
    from mtdiff.checkpoint import checkpoint_steps

    out = {}
    for arm in arms_of(tables):
        metrics = {CURVE_METRIC[t] for t in tables if arm in TABLES[t]}
        points = []
        for step in checkpoint_steps(runs / arm):
            run, point = load_run(runs / arm, device=device, step=step), {"step": step}
            if "FID" in metrics:
                scores = generation_scores(run, scale, scale.curve_num, test, extractor, seed, runs / "eval")
                point["FID"] = scores[next(k for k in scores if k.startswith("FID"))]
            if "class IoU" in metrics:
                scores = translation_scores(run, scale, scale.curve_num, test, seed)
                point["class IoU"] = scores[SEG_PREFIX + "class_iou"]
            if "accuracy" in metrics:
                point["accuracy"] = head_scores(run, test, 5 * scale.curve_num, seed)["accuracy"]
            points.append(point)
        out[arm] = points
    return out


def plot_convergence(curves: dict, path: Path) -> None:
    """One panel per curve metric, one line per arm (the first seed's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["FID", "class IoU", "accuracy"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, metric in zip(axes, metrics):
        for i, (arm, points) in enumerate(curves.items()):
            pts = [p for p in points if metric in p]
            if pts:
                ax.plot(
                    [p["step"] for p in pts], [p[metric] for p in pts], marker="o", color=f"C{i % 10}", label=NAMES[arm]
                )
        ax.set_xlabel("training steps")
        ax.set_ylabel(metric + (" (MNIST-CNN features)" if metric == "FID" else ""))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------- claims and markdown


@dataclass(frozen=True)
class Side:
    """One side of a comparison: the mean over seeds and its standard deviation (None with one seed)."""

    mean: float
    sd: float | None = None

    def text(self, digits: int) -> str:
        return f"{self.mean:.{digits}f}" + (f" ± {self.sd:.{digits}f}" if self.sd is not None else "")


HOLDS, FAILS, WITHIN = "holds", "does not hold", "within the spread"


def verdict(a: Side, b: Side, *, lower: bool) -> str:
    """Whether ``a`` beats ``b`` (lower is better for distances; at least as high for scores): HOLDS when the
    difference points that way and exceeds its spread (the sds added in quadrature), FAILS when it points the
    other way beyond the spread, else WITHIN. With one seed (no sd) the direction alone decides."""
    better = a.mean < b.mean if lower else a.mean >= b.mean
    if a.sd is None or b.sd is None:
        return HOLDS if better else FAILS
    if abs(a.mean - b.mean) <= math.hypot(a.sd, b.sd):
        return WITHIN
    return HOLDS if better else FAILS


def combine(verdicts: list[str]) -> str:
    """A claim made of several comparisons (every mask size, every score): FAILS if one fails, HOLDS if all hold."""
    return FAILS if FAILS in verdicts else HOLDS if all(v == HOLDS for v in verdicts) else WITHIN


def claims(r: dict, sd: dict | None = None) -> list[dict]:
    """Each comparison the paper draws from the tables in ``r`` (their means over seeds; ``sd``: their standard
    deviations, None or a None table with one seed), its verdict here and the numbers; a table not in ``r``
    (not run yet) decides none of its claims."""

    def side(*path) -> Side:
        mean, spread = r, sd
        for key in path:
            mean, spread = mean[key], None if spread is None else spread[key]
        return Side(float(mean), None if spread is None else float(spread))

    def pair(a: Side, b: Side, lower: bool, digits: int = 2):
        return [verdict(a, b, lower=lower)], f"{a.text(digits)} vs {b.text(digits)}"

    def everywhere(a: list[Side], b: list[Side], lower: bool, digits: int = 3):
        rng = lambda xs: f"{min(x.mean for x in xs):.{digits}f}-{max(x.mean for x in xs):.{digits}f}"
        return [verdict(x, y, lower=lower) for x, y in zip(a, b)], f"{rng(a)} vs {rng(b)}"

    out = []
    if "table2" in r:
        fid = next(k for k in r["table2"]["rows"]["ddpm"] if k.startswith("FID"))
        f = {a: side("table2", "rows", a, fid) for a in r["table2"]["rows"]}
        out += [
            (
                "table2",
                "MT-Diffusion-X beats single-task DDPM (FID)",
                *pair(f["masked-x"], f["ddpm"], True),
                "9.85 vs 23.22",
            ),
            (
                "table2",
                "MT-Diffusion-U beats single-task DDPM (FID; the paper's text says so, its table does not)",
                *pair(f["masked-u"], f["ddpm"], True),
                "26.00 vs 23.22",
            ),
            (
                "table2",
                "MT-Diffusion-X beats MT-Diffusion-U (FID)",
                *pair(f["masked-x"], f["masked-u"], True),
                "9.85 vs 26.00",
            ),
            (
                "table2",
                "MT-Diffusion-M beats MT-Diffusion-E (FID)",
                *pair(f["label-m"], f["label-e"], True),
                "33.92 vs 41.00",
            ),
            (
                "table2",
                "joint image-label training costs image quality: DDPM beats M and E (FID)",
                [verdict(f["ddpm"], f[arm], lower=True) for arm in ("label-m", "label-e")],
                f"{f['ddpm'].text(2)} vs {f['label-m'].text(2)}, {f['label-e'].text(2)}",
                "23.22 vs 33.92, 41.00",
            ),
        ]
    if "table1" in r:
        t1 = {
            row: [side("table1", "rows", row, f"mask-{k}", "perceptual") for k in PATCHES]
            for row in r["table1"]["rows"]
        }
        out += [
            (
                "table1",
                "MT-Diffusion-X is closer to the original than the masked input, every mask size",
                *everywhere(t1["mt_x"], t1["clean_masked"], True),
                "0.035-0.133 vs 0.311-0.491",
            ),
            (
                "table1",
                "MT-Diffusion-X is closer to the original than SDEdit, every mask size",
                *everywhere(t1["mt_x"], t1["sdedit"], True),
                "0.035-0.133 vs 0.400-0.513",
            ),
            (
                "table1",
                "the masked input is closer to the original than SDEdit, every mask size",
                *everywhere(t1["clean_masked"], t1["sdedit"], True),
                "0.311-0.491 vs 0.400-0.513",
            ),
        ]
    if "table4" in r:
        t4 = {arm: [side("table4", "rows", arm, m) for m in SEG_METRICS] for arm in r["table4"]["rows"]}
        seg = {arm: "/".join(x.text(3) for x in t4[arm]) for arm in t4}
        out.append(
            (
                "table4",
                "MT-Diffusion beats single-task conditional diffusion on all three scores",
                [verdict(a, b, lower=False) for a, b in zip(t4["seg2img"], t4["seg2img-single"])],
                f"{seg['seg2img']} vs {seg['seg2img-single']}",
                "0.95/0.85/0.70 vs 0.72/0.54/0.32",
            )
        )
    if "figure6" in r:
        f6 = {arm: side("figure6", "rows", arm, "accuracy") for arm in r["figure6"]["rows"]}
        out += [
            (
                "figure6",
                f"the MT-Diffusion-{h} label head classifies at least as well as classifier-only training",
                *pair(f6[arm], f6[f"{arm}-classifier-only"], False, 3),
                "figure only (ImageNet)",
            )
            for h, arm in (("M", "label-m"), ("E", "label-e"))
        ]
    found = []
    for table, claim, verdicts, ours, paper in out:
        v = combine(verdicts)
        one = sd is None or sd.get(table) is None
        found.append(
            {
                "table": TITLES[table],
                "claim": claim,
                "verdict": v,
                "holds": v == HOLDS,
                "one_seed": one,
                "ours": ours,
                "paper": paper,
            }
        )
    return found


def _cell(ours: float, paper: float | None, digits: int, paper_digits: int, sd: float | None = None) -> str:
    """ "ours ± sd (paper)", each with its digits; without the sd for one seed, the paper where it has a number."""
    return (
        f"{ours:.{digits}f}"
        + (f" ± {sd:.{digits}f}" if sd is not None else "")
        + (f" ({paper:.{paper_digits}f})" if paper is not None else "")
    )


def _sd(sd: dict | None, *path):
    """The standard deviation at ``path`` of the sd tree, or None (one seed)."""
    for key in path:
        if sd is None:
            return None
        sd = sd[key]
    return sd


def _header(cols) -> list[str]:
    return ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]


def _md_table2(t2: dict, sd: dict | None) -> list[str]:
    ddpm = t2["rows"]["ddpm"]
    names = [next(k for k in ddpm if k == met or k.startswith(met + " (")) for met in TABLE2_METRICS]
    lines = [
        (
            f"### Table 2: training efficiency ({ddpm['n']} joint samples from scratch vs the {ddpm['n_reference']} "
            "test images; -X from the complete mask; the paper's ImageNet numbers in parentheses)"
        ),
        "",
        *_header(["model (paper's row)", *names]),
    ]
    for arm, row in t2["rows"].items():
        cells = [
            _cell(row[n], t2["paper"][arm][met], 2 if met in ("IS", "FID", "sFID") else 3, 2, _sd(sd, "rows", arm, n))
            for n, met in zip(names, TABLE2_METRICS)
        ]
        lines.append(f"| {NAMES[arm]} ({t2['paper_rows'][arm]}) | " + " | ".join(cells) + " |")
    return lines


def _md_table1(t1: dict, sd: dict | None) -> list[str]:
    masks = [f"mask-{k}" for k in PATCHES]
    cols = ["model", *(f"Mask-{k}" for k in PATCHES)]
    lines = [
        (
            f"### Table 1: masked-image recovery ({t1['n_per_mask']} test images per mask size, patches of 8x8 px; "
            f"{t1['perceptual_metric']}; the paper's ImageNet LPIPS in parentheses)"
        ),
        "",
        *_header(cols),
    ]
    lines += [
        f"| {NAMES[row]} | "
        + " | ".join(
            _cell(v[m]["perceptual"], t1["paper"].get(row, {}).get(m), 3, 3, _sd(sd, "rows", row, m, "perceptual"))
            for m in masks
        )
        + " |"
        for row, v in t1["rows"].items()
    ]
    lines += [
        "",
        (
            "MSE on the masked pixels (images in [-1, 1]; the paper reports none; the known pixels are pasted "
            "back in every row, so the MSE on them is 0):"
        ),
        "",
        *_header(cols),
    ]
    lines += [
        f"| {NAMES[row]} | "
        + " | ".join(_cell(v[m]["mse_masked"], None, 3, 3, _sd(sd, "rows", row, m, "mse_masked")) for m in masks)
        + " |"
        for row, v in t1["rows"].items()
    ]
    return lines


def _md_table4(t4: dict, sd: dict | None) -> list[str]:
    lines = [
        (
            f"### Table 4: class mask -> image ({t4['rows']['seg2img']['all']['n']} test masks; generated digits "
            f"segmented by {t4['segmented_by']}; the paper's Cityscapes numbers in parentheses)"
        ),
        "",
        *_header(["model", "per-pixel acc.", "per-class acc.", "class IoU"]),
    ]
    return lines + [
        f"| {NAMES[arm]} | "
        + " | ".join(_cell(v[m], t4["paper"][arm][m], 3, 2, _sd(sd, "rows", arm, m)) for m in SEG_METRICS)
        + " |"
        for arm, v in t4["rows"].items()
    ]


def _md_figure6(f6: dict, sd: dict | None) -> list[str]:
    rows = f6["rows"]
    lines = [
        (
            f"### Figure 6: classification ({rows['label-m']['n']} test images; {f6['method']}; the paper plots "
            "ImageNet top-1/top-5 against fine-tuning steps, no table)"
        ),
        "",
        *_header(["model", "accuracy", "ECE (15 bins)", "NLL"]),
    ]
    return lines + [
        f"| {NAMES[arm]} | "
        + " | ".join(_cell(v[k], None, 3, 3, _sd(sd, "rows", arm, k)) for k in ("accuracy", "ece", "nll"))
        + " |"
        for arm, v in rows.items()
    ]


def _md_claims(found: list[dict], missing: list[str]) -> list[str]:
    lines = ["### Do the paper's claims hold here?", "", *_header(["source", "claim", "here", "ours", "paper"])]
    lines += [
        f"| {c['table']} | {c['claim']} | {c['verdict'] if c['holds'] else '**' + c['verdict'] + '**'}"
        f"{' (1 seed)' if c['one_seed'] else ''} | {c['ours']} | {c['paper']} |"
        for c in found
    ]
    held, failed = (sum(c["verdict"] == v for c in found) for v in (HOLDS, FAILS))
    within = len(found) - held - failed
    return lines + [
        "",
        f"{held} of {len(found)} claims hold at this scale"
        + (f"; {failed} {'does' if failed == 1 else 'do'} not (a result, not a bug to hide)" if failed else "")
        + (f"; {within} {'is' if within == 1 else 'are'} within the spread of the seeds" if within else "")
        + "."
        + (f" Not run yet at this scale: {', '.join(TITLES[t] for t in missing)}." if missing else ""),
    ]


def _md_curve(curves: dict) -> list[str]:
    """Quality against steps, the first seed's: one row per arm and metric, one column per checkpoint."""
    seed, arms = next(iter(curves.items()))
    steps = sorted({p["step"] for points in arms.values() for p in points})
    lines = [
        f"### Convergence (seed {seed}; small samples: read along a row, not against the tables)",
        "",
        *_header(["arm", "metric", *(f"step {k}" for k in steps)]),
    ]
    for arm, points in arms.items():
        for metric in ("FID", "class IoU", "accuracy"):
            at = {p["step"]: p[metric] for p in points if metric in p}
            if at:
                cells = [f"{at[k]:.{1 if metric == 'FID' else 3}f}" if k in at else "-" for k in steps]
                lines.append(f"| {NAMES[arm]} | {metric} | " + " | ".join(cells) + " |")
    return lines


def _seeds_text(seeds: dict[str, list[int]]) -> str:
    """``seeds``: the seeds each table was run with (the same for all after one complete run)."""
    texts = {}
    for table, ss in seeds.items():
        if len(ss) == 1:
            text = f"one seed ({ss[0]}) for training and evaluation: no spread is known"
        else:
            text = (
                f"seeds {', '.join(map(str, ss))} (each arm trained and evaluated once per seed): mean ± standard "
                "deviation over the seeds"
            )
        texts.setdefault(text, []).append(TITLES[table])
    if len(texts) == 1:
        return next(iter(texts)).capitalize() + "."
    return " ".join(f"{', '.join(tables)}: {text}." for text, tables in texts.items())


def markdown(r: dict) -> str:
    """The four tables laid out like the paper's, our numbers first and the paper's in parentheses."""
    m, s = r["machine"], r["settings"]
    lines = [
        f"## The paper's comparisons at MNIST scale (`benchmarks/paper_claims.py`, scale `{r['scale']}`)",
        "",
        f"Command: `{r['command']}`",
        "",
        (
            f"Machine: {m['platform']}, {m['cpu_count']} CPUs ({m['cpu']}), {m['torch_threads']} torch threads, "
            f"torch {m['torch']}, device {m['device']} ({m['device_name']}). Wall clock "
            f"{r['seconds']['total'] / 60:.1f} min (estimated {r['estimate_seconds']['total'] / 60:.1f} min up front)."
        ),
        "",
        (
            f"Every arm: {s['backbone']}, {s['steps']} steps at batch {s['batch_size']}, lr {s['lr']}; every sampler "
            f"DDIM (eta 0), {s['sample_steps']} steps. {_seeds_text(r['seeds'])} Our numbers "
            "first, the paper's in parentheses: **other data (MNIST 32 px here; ImageNet and Cityscapes there), other "
            "scale (minutes on a CPU here; 1M iterations on GPUs there), other feature networks**: compare the "
            "direction of each comparison, not the values."
        ),
    ]
    if r["scale"] == "smoke":
        lines += ["", "**Smoke scale: a test that the pipeline runs. These numbers mean nothing.**"]
    runs_on: dict[str, list[str]] = {}
    for seed, where in (r.get("provenance") or {}).items():
        for table, text in where.items():
            runs_on.setdefault(text, []).append(f"{TITLES[table]} seed {seed}")
    if len(runs_on) > 1:
        lines += [
            "",
            "Put together from several runs: " + "; ".join(f"{', '.join(p)} on {w}" for w, p in runs_on.items()) + ".",
        ]
    sd = r["sd"] or {}
    draw = {"table2": _md_table2, "table1": _md_table1, "table4": _md_table4, "figure6": _md_figure6}
    for part in (
        *(draw[t](r[t], sd.get(t)) for t in TABLES if t in r),
        _md_claims(r["claims"], [t for t in TABLES if t not in r]),
        *([_md_curve(r["curve"])] if r.get("curve") else []),
    ):
        lines += ["", *part]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- seeds


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def mean_and_sd(trees: list) -> tuple:
    """The element-wise mean and sample standard deviation of equally shaped nested dicts (other leaves are
    taken from the first tree; the sd tree holds None there). With one tree the sd tree is None."""
    if len(trees) == 1:
        return trees[0], None

    def walk(xs):
        if isinstance(xs[0], dict):
            pairs = {k: walk([x[k] for x in xs]) for k in xs[0]}
            return {k: m for k, (m, _) in pairs.items()}, {k: d for k, (_, d) in pairs.items()}
        if all(_is_number(x) for x in xs):
            if all(x == xs[0] for x in xs):  # a count (samples, steps) stays an int
                return xs[0], 0.0
            return statistics.fmean(xs), statistics.stdev(xs)
        return xs[0], None

    return walk(trees)


# ---------------------------------------------------------------------------- main


def _table_list(text: str) -> tuple[str, ...]:
    tables = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in tables if t not in TABLES]
    if not tables or unknown:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(TABLES)}, got {text!r}")
    return tuple(t for t in TABLES if t in tables)


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text!r}")
    return seeds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=sorted(SCALES), required=True)
    ap.add_argument("--runs", type=Path, default=Path("runs/paper_claims"), help="one run directory per arm here")
    ap.add_argument("--out-dir", type=Path, default=RESULTS, help="where paper_claims.json and .md are written")
    ap.add_argument("--features", default="mnist-cnn", help="image feature extractor for FID and perceptual distance")
    ap.add_argument(
        "--lpips-weights",
        default=os.environ.get("MTDIFF_LPIPS_WEIGHTS"),
        help="torchvision AlexNet weights file: Table 1 in real LPIPS (default: a feature distance)",
    )
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the scale's)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: the scale's; 1 can be much faster when other jobs share the cores)",
    )
    ap.add_argument(
        "--seeds",
        type=seed_list,
        default=[0],
        metavar="S,...",
        help="train and evaluate every arm once per seed; tables show mean ± sd (default: 0)",
    )
    ap.add_argument(
        "--tables",
        type=_table_list,
        default=tuple(TABLES),
        metavar="T,...",
        help=f"train and evaluate only the arms of these tables ({', '.join(TABLES)}; default: all); results "
        "add to those already written with the same settings, so a long scale can be run table by table",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for every arm, e.g. --set train.steps=500",
    )
    ap.add_argument("--estimate-only", action="store_true", help="print the time estimate and exit")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def arm_dir(runs: Path, seed: int, arm: str) -> Path:
    return runs / f"seed-{seed}" / arm


def objective(arm: str) -> str:
    return "classifier-only" if arm in CLASSIFIER_ONLY else "diffusion"


def plan(args, scale: Scale, cfgs: dict[int, dict[str, Config]], train, test) -> tuple[dict, dict]:
    """Steps still to train per arm (over all seeds), speeds measured now, and the time estimate (printed first)."""
    remaining = {
        arm: sum(
            c[arm].train.steps - run_state(arm_dir(args.runs, s, arm), c[arm], objective(arm)) for s, c in cfgs.items()
        )
        for arm in cfgs[args.seeds[0]]
    }
    first = cfgs[args.seeds[0]]
    reference = first.get("ddpm") or arm_config("ddpm", scale, args.seeds[0], args.overrides)  # sampling speed
    speed = calibrate({a: c for a, c in first.items() if remaining[a] > 0}, reference, train, scale.batch)
    guess = estimate(scale, remaining, speed, len(test), evaluations=len(cfgs), tables=args.tables)
    steps_per_s = {a: round(1 / v, 2) for a, v in speed["sec_per_step"].items()}
    steps = next(iter(first.values())).train.steps
    print(
        f"[paper_claims] scale {args.scale}, {', '.join(TITLES[t] for t in args.tables)}: {len(first)} arms x "
        f"{steps} steps x {len(cfgs)} seed(s), {sum(remaining.values())} still to train; measured now: "
        f"training steps/s {steps_per_s}, {1 / speed['sec_per_forward_image']:.0f} img/s per sampling step. "
        f"Estimate: {guess['training'] / 60:.1f} min training + {(guess['total'] - guess['training']) / 60:.1f} min "
        f"evaluation = {guess['total'] / 60:.1f} min",
        flush=True,
    )
    return speed, guess


def evaluate_all(args, scale: Scale, test, seed: int, extractor, lpips) -> tuple[dict, dict]:
    """The chosen tables (and with a curve, the convergence of their arms) of one seed, evaluated with that
    seed, and the seconds each took."""
    runs, device = args.runs / f"seed-{seed}", scale.device
    tables = {
        "table2": lambda: table2_generation(runs, scale, test, extractor, seed, device),
        "table1": lambda: table1_restoration(runs, scale, test, extractor, lpips, seed, device),
        "table4": lambda: table4_translation(runs, scale, test, seed, device),
        "figure6": lambda: figure6_classification(runs, scale, test, seed, device),
    }
    tables = {t: fn for t, fn in tables.items() if t in args.tables}
    if scale.curve:
        tables["curve"] = lambda: convergence(runs, scale, test, extractor, seed, device, args.tables)
    result, seconds = {}, {}
    for key, fn in tables.items():
        t0 = time.perf_counter()
        result[key] = fn()
        seconds[key] = round(time.perf_counter() - t0, 1)
        print(f"[paper_claims] seed {seed}: {key} done in {seconds[key]:.0f} s", flush=True)
    return result, seconds


def _comparable(settings: dict) -> dict:
    """The settings two runs must share for their tables to be put together (all but the seeds), as JSON has them."""
    return json.loads(json.dumps({k: v for k, v in settings.items() if k != "seeds"}))


def earlier_results(path: Path, settings: dict) -> dict | None:
    """What an earlier run with the same settings wrote to ``path``, as ``per_seed`` / ``curve`` / ``provenance`` /
    ``arms`` (a file of the single-seed layout is read as its one seed); None when there is none, and (said)
    when it was made with other settings: this run's results then replace it."""
    if not path.is_file():
        return None
    try:
        prev = json.loads(path.read_text())
        theirs = prev["settings"]
    except (ValueError, KeyError, TypeError):
        print(f"[paper_claims] {path} is not a paper_claims result; it is replaced", flush=True)
        return None
    diff = differing(_comparable(settings), _comparable(theirs))
    if diff:
        print(
            f"[paper_claims] {path} holds results of other settings ({', '.join(diff)}); they are replaced", flush=True
        )
        return None
    seed = str(theirs["seeds"][0])  # an old single-seed file: its one seed
    where = where_run(prev["machine"], prev.get("date"))
    return {
        "per_seed": prev.get("per_seed") or {seed: {t: prev[t] for t in TABLES if t in prev}},
        "curve": prev.get("curve") or {},
        "provenance": prev.get("provenance") or {seed: {t: where for t in TABLES if t in prev}},
        "arms": prev.get("arms") or {},
    }


def where_run(m: dict, date: str | None) -> str:
    return f"{m['device_name']} ({m['cpu_count']} CPUs, torch {m['torch']})" + (f", {date}" if date else "")


def _merge_points(before: list[dict], now: list[dict]) -> list[dict]:
    """Curve points of one arm: per step, the metrics of both runs (this run's where both have one)."""
    at = {p["step"]: dict(p) for p in before}
    for p in now:
        at.setdefault(p["step"], {}).update(p)
    return [at[k] for k in sorted(at)]


def put_together(now: dict, before: dict | None) -> dict:
    """This run's per-seed tables, curves, provenance and arms over an earlier run's (``earlier_results``); then
    each table's mean and sd over the seeds that have it (sd None for one seed; the whole sd None when no table
    has two) and the seeds per table."""
    merged = {key: {} for key in ("per_seed", "curve", "provenance", "arms")}
    for part in (before or {}, now):
        for key, by_seed in part.items():
            if key == "arms":
                merged[key].update(by_seed)
                continue
            for seed, items in by_seed.items():
                into = merged[key].setdefault(seed, {})
                if key == "curve":  # per arm and step: this run's metrics over the earlier run's
                    items = {arm: _merge_points(into.get(arm, []), points) for arm, points in items.items()}
                into.update(items)
    seeds = {
        t: sorted((s for s in merged["per_seed"] if t in merged["per_seed"][s]), key=int)
        for t in TABLES
        if any(t in tabs for tabs in merged["per_seed"].values())
    }
    tables, sd = {}, {}
    for t, ss in seeds.items():
        tables[t], sd[t] = mean_and_sd([merged["per_seed"][s][t] for s in ss])
    return {
        **merged,
        "tables": tables,
        "sd": sd if any(v is not None for v in sd.values()) else None,
        "seeds": {t: [int(s) for s in ss] for t, ss in seeds.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    from mtdiff.pretrained.images import load_image_features
    from mtdiff.pretrained.lpips import load_lpips

    args = parse_args(argv)
    t_start = time.perf_counter()
    scale = SCALES[args.scale]
    if args.device:
        scale = replace(scale, device=args.device, overrides=(*scale.overrides, f"train.device={args.device}"))
    if args.threads or scale.threads:
        torch.set_num_threads(args.threads or scale.threads)
    arms = arms_of(args.tables)
    cfgs = {seed: {arm: arm_config(arm, scale, seed, args.overrides) for arm in arms} for seed in args.seeds}
    c = cfgs[args.seeds[0]][arms[0]]
    train, test = load_data(c, "train"), load_data(c, "test")
    speed, guess = plan(args, scale, cfgs, train, test)
    if args.estimate_only:
        return {"estimate_seconds": guess, "speed_measured": speed}

    t0 = time.perf_counter()
    progress = not args.quiet and sys.stdout.isatty()
    trained = {
        f"seed-{seed}/{arm}": train_arm(arm, cfg, arm_dir(args.runs, seed, arm), train, progress=progress)
        for seed, by_arm in cfgs.items()
        for arm, cfg in by_arm.items()
    }
    seconds = {"training": round(time.perf_counter() - t0, 1)}
    extractor = load_image_features(args.features, scale.device)
    lpips = load_lpips("alex", args.lpips_weights).to(scale.device) if args.lpips_weights else None
    per_seed = {}
    for seed in args.seeds:
        per_seed[str(seed)], taken = evaluate_all(args, scale, test, seed, extractor, lpips)
        for key, v in taken.items():
            seconds[key] = round(seconds.get(key, 0.0) + v, 1)
    seconds["total"] = round(time.perf_counter() - t_start, 1)
    curves = {seed: t.pop("curve") for seed, t in per_seed.items() if "curve" in t}
    settings = {
        "backbone": backbone_text(c),
        "steps": c.train.steps,
        "batch_size": c.train.batch_size,
        "lr": c.train.lr,
        "seeds": args.seeds,
        "sampler": "ddim",
        "eta": 0.0,
        "sample_steps": scale.sample_steps,
        "features": args.features,
        "scale": asdict(scale),
        "overrides": args.overrides,
    }
    stem = args.out_dir / ("paper_claims" if args.scale == "cpu" else f"paper_claims-{args.scale}")
    mach, date = machine(scale.device), time.strftime("%Y-%m-%d")
    now = {
        "per_seed": per_seed,
        "curve": curves,
        "provenance": {seed: {t: where_run(mach, date) for t in tabs} for seed, tabs in per_seed.items()},
        "arms": trained,
    }
    whole = put_together(now, earlier_results(stem.with_suffix(".json"), settings))
    settings["seeds"] = sorted({s for ss in whole["seeds"].values() for s in ss})
    result = {
        "benchmark": "paper_claims",
        "scale": args.scale,
        "machine": mach,
        "date": date,
        "command": shlex.join(["python", "benchmarks/paper_claims.py", *(sys.argv[1:] if argv is None else argv)]),
        "settings": settings,
        "estimate_seconds": guess,
        "speed_measured": speed,
        "seconds": seconds,  # of this run
        "arms": whole["arms"],
        **whole["tables"],  # the means over each table's seeds (one seed: its numbers)
        "sd": whole["sd"],  # their standard deviations (None for one seed)
        "seeds": whole["seeds"],  # per table
        "per_seed": whole["per_seed"],
        "curve": whole["curve"] or None,  # per seed: quality against steps of every arm
        "provenance": whole["provenance"],  # per seed and table: the machine and day it ran on
    }
    result["claims"] = claims(whole["tables"], whole["sd"])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    stem.with_suffix(".md").write_text(markdown(result))
    if whole["curve"]:
        plot_convergence(next(iter(whole["curve"].values())), stem.parent / f"{stem.name}-curve.png")
    print(markdown(result))
    print(f"[paper_claims] wrote {stem}.json and .md in {seconds['total']:.0f} s", flush=True)
    return result


if __name__ == "__main__":
    main()
