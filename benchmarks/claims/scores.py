"""One scorer per table of the paper: Table 2 (generation), Table 1 (restoration), Table 4 (translation),
Figure 6 (classification), and the quality of each arm against its training steps."""

from __future__ import annotations

from pathlib import Path

import torch

from mtdiff.data.masking import apply_mask, make_mask
from mtdiff.evaluate import joint_images, translate
from mtdiff.metrics.quality import sample_quality
from mtdiff.metrics.task import calibration, masked_errors, perceptual_distance
from mtdiff.runs import Run, load_run
from mtdiff.sampling import head_estimates, timesteps

from .arms import TABLES, Scale, arms_of
from .paper import NAMES, PAPER_TABLE1, PAPER_TABLE2, PAPER_TABLE4, PATCHES, SEG_METRICS, TABLE2_METRICS

SEG_PREFIX = "generated_by_threshold_mnist_cnn_ccexam/"  # the translation scorer's keys
ROWS = {  # each table's rows, in its order
    "table2": tuple(PAPER_TABLE2),
    "table1": tuple(PAPER_TABLE1),
    "table4": tuple(PAPER_TABLE4),
    "figure6": TABLES["figure6"],
}


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


def table2_generation(runs: Path, scale: Scale, test, extractor, seed: int, device, arms=TABLES["table2"]) -> dict:
    """Table 2 (training efficiency): FID-family scores of joint samples from scratch (-X from the complete
    mask) of each of ``arms``, all trained for the same steps, against the whole test split."""
    rows = {
        arm: generation_scores(
            load_run(runs / arm, device=device), scale, scale.num_samples, test, extractor, seed, runs / "eval"
        )
        for arm in PAPER_TABLE2
        if arm in arms
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


def _restorations(
    ddpm: Run | None, mtx: Run | None, x, masked, keep, scale: Scale, seed: int, device
) -> dict[str, torch.Tensor]:
    """The rows of Table 1 for one mask size (SDEdit and RePaint with ``ddpm``, MT-Diffusion-X with ``mtx``; each
    row draws from its own seeded generator, so a row does not depend on which others are computed); every
    restoration keeps the known pixels exactly."""
    out = {"clean_masked": masked}
    if ddpm is not None:
        T, s = ddpm.process.num_timesteps, scale.sample_steps
        g = torch.Generator(device).manual_seed(seed)
        repaint = ddim_single_task(
            ddpm,
            torch.randn(x.shape, generator=g, device=device),
            timesteps(T, s),
            generator=g,
            known=masked,
            keep=keep,
        )
        out["sdedit"] = paste_known(masked, keep, sdedit(ddpm, masked, scale, seed, device))
        out["repaint"] = paste_known(masked, keep, repaint)
    if mtx is not None:
        out["mt_x"] = mtx.restore(x, keep, **sample_kw(scale, seed)).restored
    return out


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


def table1_restoration(
    runs: Path, scale: Scale, test, extractor, lpips, seed: int, device, arms=TABLES["table1"]
) -> dict:
    """Table 1 (masked-image recovery): perceptual distance and masked-pixel MSE between test images and their
    restorations from masks of 5, 10, 15, 20 random patches; the rows of ``arms`` (and the masked input)."""
    ddpm, mtx = (load_run(runs / arm, device=device) if arm in arms else None for arm in ("ddpm", "masked-x"))
    x, keeps = table1_inputs(test, scale, seed, device)
    rows: dict[str, dict] = {}  # the rows _restorations makes with the arms given
    metric = None
    for k, keep in keeps.items():
        outs = _restorations(ddpm, mtx, x, apply_mask(x, keep), keep, scale, seed, device)
        for row, out in outs.items():
            ((metric, dist),) = perceptual_distance(out, x, lpips=lpips, extractor=None if lpips else extractor).items()
            errors = masked_errors(out, x, keep)
            rows.setdefault(row, {})[f"mask-{k}"] = {
                "perceptual": dist,
                "mse_masked": errors["mse_masked"],
                "mse_unmasked": errors["mse_unmasked"],
            }
    return {
        "perceptual_metric": metric,
        "n_per_mask": len(x),
        **({"sdedit_t": ddpm.process.num_timesteps // 2} if ddpm is not None else {}),
        "rows": rows,
        "paper": {r: dict(zip((f"mask-{k}" for k in PATCHES), v)) for r, v in PAPER_TABLE1.items() if v},
    }


def table4_translation(runs: Path, scale: Scale, test, seed: int, device, arms=TABLES["table4"]) -> dict:
    """Table 4 (image translation): class mask -> image by each of ``arms``; the generated digits are segmented by
    threshold and the MNIST-CNN (ccexam) classifier and scored against the mask (per-pixel / per-class accuracy,
    class IoU)."""
    rows = {}
    for arm in (a for a in PAPER_TABLE4 if a in arms):
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
def head_probs(
    run: Run, test, num: int | None, seed: int, *, t: int = 0, told: bool = False, batch: int = 500
) -> tuple:
    """Label-head probabilities of the first ``num`` test images (None: all) in inverse mode at time index ``t``,
    batched and seeded as ``mtdiff.evaluate.classify``, and their labels. ``told``: z_t carries the true label's
    encoding, as in the training batches that keep it (a diagnostic: how much the head reads its own answer)."""
    n = len(test) if num is None else min(num, len(test))
    g = run.generator(seed)
    name = run.modality("label", required="classify")

    def probs(idx):
        if not told:
            return run.classify(test.to_float(idx), t=t, generator=g)
        z0 = run.latent.encode(run.pixels(test.to_float(idx)))
        return head_estimates(run.model, run.process, z0, {name: test.labels[idx]}, t=t, generator=g)[name]

    out = [probs(torch.arange(i, min(i + batch, n))).double().cpu() for i in range(0, n, batch)]
    return torch.cat(out), test.labels[:n]


def head_scores(run: Run, test, num: int | None, seed: int, *, t: int = 0, told: bool = False) -> dict:
    """Accuracy, calibration and NLL of the label head (``head_probs``)."""
    probs, labels = head_probs(run, test, num, seed, t=t, told=told)
    return {
        **calibration(probs, labels),
        "nll": float(-probs.gather(1, labels[:, None]).clamp_min(1e-12).log().mean()),
    }


def figure6_classification(runs: Path, scale: Scale, test, seed: int, device, arms=TABLES["figure6"]) -> dict:
    """Figure 6 (classification): test accuracy and calibration of the M and E label heads against the same
    networks trained only to classify, for the same steps (the rows of ``arms``)."""
    rows = {
        arm: head_scores(load_run(runs / arm, device=device), test, scale.num_classify, seed)
        for arm in TABLES["figure6"]
        if arm in arms
    }
    return {"rows": rows, "method": "label head, inverse mode, t = 0"}


CURVE_METRIC = {"table2": "FID", "table1": "FID", "table4": "class IoU", "figure6": "accuracy"}  # per table


def convergence(
    runs: Path, scale: Scale, test, extractor, seed: int, device, tables: list[str], arms: list[str] | None = None
) -> dict:
    """Quality against training steps, from the checkpoints each arm kept, in the metric of each of ``tables`` the
    arm is in: FID of ``curve_num`` joint samples (Tables 2 and 1), class IoU of ``curve_num`` translations
    (Table 4), label-head accuracy on 5 x ``curve_num`` test images (Figure 6; the label arms of Table 2 get both
    when both tables run); ``arms``: only these of the tables' arms. Small samples: compare points of one arm, not
    with the tables."""
    from mtdiff.checkpoint import checkpoint_steps

    out = {}
    for arm in (a for a in arms_of(tables) if arms is None or a in arms):
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
