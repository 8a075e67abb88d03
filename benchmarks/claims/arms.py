"""The arms of the paper's comparisons (one preset each, at one scale and seed) and their training, reused when
finished and resumed when not."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from mtdiff.checkpoint import has_checkpoints, latest_checkpoint
from mtdiff.config import Config, load_config, to_dict
from mtdiff.runs import gives_class, read_run_config
from mtdiff.train import Trainer

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
CLASSIFY = "classifier-only"  # the objective of those arms (and of a fine-tuned classifier); every other: "diffusion"
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
    overrides = [*own, *scale.overrides, f"train.seed={seed}", *extra]
    cfg = load_config(preset, overrides)
    if scale.curve:
        every, keep = math.ceil(cfg.train.steps / (scale.curve + 1)), scale.curve + 2
        cfg = load_config(preset, [*overrides, f"train.ckpt_every={every}", f"train.keep_checkpoints={keep}"])
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


def saved_differences(run_dir: Path, cfg: Config, ignore: tuple[str, ...] = ()) -> list[str]:
    """The keys (flattened) in which the config saved in ``run_dir`` differs from ``cfg``, but for those that
    start with one of ``ignore``."""
    return [k for k in differing(to_dict(read_run_config(run_dir)), to_dict(cfg)) if not k.startswith(ignore)]


def latest_step(run_dir: Path) -> int:
    """The step of ``run_dir``'s latest checkpoint (0 if none)."""
    ckpt = latest_checkpoint(run_dir)
    return int(json.loads((ckpt / "meta.json").read_text())["step"]) if ckpt else 0


def run_state(run_dir: Path, cfg: Config, objective: str) -> int:
    """Steps already trained in ``run_dir`` (0 if none). A run there with another config or objective is an
    error: the benchmark never mixes settings or overwrites a run."""
    if not has_checkpoints(run_dir):
        return 0
    marker = json.loads((run_dir / MARKER).read_text()) if (run_dir / MARKER).is_file() else {}
    diff = saved_differences(run_dir, cfg)
    if diff or marker.get("objective") != objective:
        why = f"config differs in {', '.join(diff)}" if diff else f"objective {marker.get('objective')}"
        raise SystemExit(f"{run_dir} holds another run ({why}); use another --runs directory or remove it")
    return latest_step(run_dir)


class ClassifierOnly(Trainer):
    """Figure 6's baseline: the same network, optimiser, warm-up, clipping, EMA, batches and seed as a
    Trainer run, but the loss is only the label head's cross-entropy on clean images in inverse mode
    (z_t at t = 0, the label as "nothing known", as ``mtdiff.sampling.read_heads`` builds it). Only the
    objective is its own (``draw``, ``loss``): micro-batches, DDP, autocast and exact resume are the Trainer's."""

    @property
    def label(self) -> str:
        """The modality whose value is the class (a label)."""
        return next(n for n, m in self.model.modalities.items() if gives_class(type(m)))

    def draw(self, batch):
        b = batch["image"].shape[0]
        return {
            "unknown": self.model.init_data([self.label], b, generator=self.gen, device=self.device),
            "noise": torch.randn((b, *self.model.z_shape), generator=self.gen, device=self.device),
        }

    def loss(self, batch, drawn, rows):
        name = self.label
        z0, _ = self.diffusion_data({"image": batch["image"][rows]}, {})
        unknown = {name: drawn["unknown"][name][rows]}
        t0 = torch.zeros(z0.shape[0], dtype=torch.long, device=self.device)
        zt = self.process.q_sample(z0, t0, self.model.encode(unknown), drawn["noise"][rows])
        return F.cross_entropy(self.net(zt, t0, unknown)[1][name].float(), batch["label"][rows]), {}


def objective_of(arm: str) -> str:
    """What an arm is trained for: ``CLASSIFY`` for Figure 6's baselines, else "diffusion"."""
    return CLASSIFY if arm in CLASSIFIER_ONLY else "diffusion"


def trainer_class(objective: str) -> type[Trainer]:
    return ClassifierOnly if objective == CLASSIFY else Trainer


def train_arm(arm: str, cfg: Config, run_dir: Path, data, *, progress: bool, objective: str | None = None) -> dict:
    """Train (or resume, or reuse) one arm with its objective (default: the arm's own); returns what was done and
    how long it took."""
    objective = objective or objective_of(arm)
    done = run_state(run_dir, cfg, objective)
    status = "reused" if done >= cfg.train.steps else "resumed" if done else "trained"
    t0 = time.perf_counter()
    if status != "reused":
        print(f"[paper_claims] {arm}: {status} from step {done} to {cfg.train.steps}", flush=True)
        trainer = trainer_class(objective)(cfg, run_dir, resume=done > 0, data=data, progress=progress)
        (run_dir / MARKER).write_text(json.dumps({"arm": arm, "objective": objective}))
        trainer.run()
    return {
        "preset": ARMS[CLASSIFIER_ONLY.get(arm, arm)][0],
        "objective": objective,
        "status": status,
        "steps": cfg.train.steps,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def arm_dir(runs: Path, seed: int, arm: str) -> Path:
    return runs / f"seed-{seed}" / arm
