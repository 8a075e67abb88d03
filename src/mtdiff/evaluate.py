"""Task evaluations of a trained run through its own heads (inverse mode)."""

from __future__ import annotations

import math

import torch

from .data.imageset import ImageSet
from .runs import Run, gives_class
from .sampling import elbo_timesteps, inverse

__all__ = ["classify", "translate", "restoration_grid", "joint_images", "representation_cosine"]


@torch.no_grad()
def classify(
    run: Run,
    data: ImageSet,
    *,
    method: str = "head",
    t: int = 0,
    batch_size: int = 500,
    num: int | None = None,
    seed: int = 0,
    elbo_steps: int = 10,
) -> dict[str, float]:
    """Accuracy on ``data`` (image -> label, Section 4.2) of the run's class modality, against its own data
    derived from ``data`` (the labels). ``method="head"`` reads the label head at time index t (inverse mode);
    ``"elbo"`` picks the class whose encoding best explains the image under the diffusion loss, at
    ``elbo_steps`` evenly spaced times."""
    if data.labels is None:
        raise ValueError(f"{data.name!r} has no labels to classify against")
    if method not in ("head", "elbo"):
        raise ValueError(f"method must be 'head' or 'elbo', got {method!r}")
    mod = run.model.modalities[run.modality(gives_class, required="classify")]
    n = len(data) if num is None else min(num, len(data))
    g = run.generator(seed)
    correct, nll, all_probs, all_y = 0, 0.0, [], []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        probs = run.classify(data.to_float(idx), method=method, t=t, generator=g, elbo_steps=elbo_steps)
        y = mod.derive(data.batch(idx), None).to(probs.device)  # the labels, for a label modality
        correct += int((probs.argmax(1) == y).sum())
        all_probs.append(probs.float().cpu())
        all_y.append(y.cpu())
        nll += float(-probs.gather(1, y[:, None]).clamp_min(1e-12).log().sum())
    from .metrics.task import calibration

    ece = calibration(torch.cat(all_probs), torch.cat(all_y))["ece"]
    out = {"accuracy": correct / n, "nll": nll / n, "ece": ece, "n": n, "method": method}
    if method == "head":
        return {**out, "t": t}
    return {**out, "elbo_timesteps": elbo_timesteps(run.process.num_timesteps, elbo_steps)}


def joint_images(run: Run, num: int, *, batch: int, **kw) -> torch.Tensor:
    """``num`` joint samples from scratch in pixels [num, C, H, W] on the CPU, drawn ``batch`` at a time
    with :meth:`mtdiff.runs.Run.sample` (``kw``: its sampler settings and seed or generator)."""
    if "generator" not in kw:
        kw["generator"] = run.generator(kw.pop("seed", 0))
    return torch.cat([run.sample(min(batch, num - start), **kw).images.float().cpu() for start in range(0, num, batch)])


@torch.no_grad()
def translate(
    run: Run,
    data: ImageSet | None = None,
    *,
    modality: str,
    num: int = 16,
    source: torch.Tensor | None = None,
    seed: int = 0,
    **sample_kw,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Image translation (Appendix E.1) with :meth:`mtdiff.runs.Run.translate`, scored.

    The source is either derived from (or, for a paired folder, read with) the first ``num`` samples
    of ``data`` (then the grid holds (source, ground truth, generated) and the modality is also read
    back from the ground-truth images: the inverse direction) or given as ``source`` (then the grid
    holds (source, generated)). The scores are the modality's (``Modality.translation_scores``): for class
    masks the generated images are segmented by the model's own mask head and, when the external MNIST
    classifier is installed, by "foreground x (MNIST-CNN label + 1)"; for edge maps the edges of the
    generated images are re-extracted and compared with the input.
    """
    model, mod = run.model, run.model.modalities[modality]
    x = None
    if source is None:
        if data is None:
            raise ValueError("translate needs data (to derive the source from) or a source tensor")
        batch = data.batch(torch.arange(min(num, len(data))), run.device)
        x = batch["image"]
        source = mod.derive(batch, None)
    source = source.to(run.device)
    fake = run.translate(source, modality=modality, seed=seed, **sample_kw).images
    picture = mod.draw(source)
    if picture is None:
        raise ValueError(f"modality {modality!r} ({mod.kind}) has no picture to translate images from")
    columns = [picture] + ([x] if x is not None else []) + [fake]
    grid = torch.stack(columns, 1).flatten(0, 1)
    scores: dict[str, float] = {"n": source.shape[0], "columns": len(columns)}

    def read(images: torch.Tensor) -> torch.Tensor:
        """The modality's head estimate from ``images`` (pixels), in inverse mode."""
        return inverse(model, run.process, run.latent.encode(images), modality, generator=run.generator(seed))

    scores.update(mod.translation_scores(source, fake, x, read))
    if x is not None:
        scores["generated_mse_to_ground_truth"] = float(((fake - x) ** 2).mean())
    return grid, scores


@torch.no_grad()
def restoration_grid(
    run: Run,
    test: ImageSet | None,
    *,
    num: int,
    mask: str = "random",
    patches: int | None = None,
    per_input: int = 2,
    project: bool = True,
    images: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    seed: int = 0,
    **sample_kw,
):
    """Constrained restoration (Section 4.1) with :meth:`mtdiff.runs.Run.restore` of ``num`` test images
    (or of ``images`` [N, C, H, W] in [-1, 1]), ``per_input`` times each, under ``mask`` patches drawn from
    ``seed`` (or the given ``keep`` [N, 1, H, W], 1 = known).

    Returns a grid of rows (original, masked, restorations...), the number of images per input, and the
    scores: the model's raw drift and MSE on the known pixels (its own last z_0 estimate, before the known
    pixels are pasted), the masked-region MSE, PSNR and SSIM, and the spread of the restorations of one input
    in the masked region.
    """
    from .data.masking import apply_mask
    from .metrics.task import ssim

    if images is None:
        images = test.to_float(torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:num])
    x = run.pixels(images)
    g = run.generator(seed)
    keep = run.draw_masks(len(x), mask=mask, patches=patches, generator=g) if keep is None else keep.to(x)
    outs = [run.restore(x, keep, project=project, generator=g, **sample_kw) for _ in range(per_input)]
    masked = apply_mask(x, keep)
    grid = torch.stack([x, masked] + [o.restored for o in outs], 1).flatten(0, 1)  # [num * (2 + per_input), C, H, W]
    hole = (1 - keep).expand_as(x)
    known = keep.expand_as(x)
    stats = {
        "raw_drift_known_mean_abs": float(torch.stack([o.drift for o in outs]).mean()),
        "unmasked_region_mse_raw": float(
            torch.stack([((o.raw - x) ** 2 * known).sum() / known.sum().clamp(min=1) for o in outs]).mean()
        ),
        "masked_region_mse": float(
            torch.stack([((o.restored - x) ** 2 * hole).sum() / hole.sum().clamp(min=1) for o in outs]).mean()
        ),
        "masked_fraction": float(hole.mean()),
    }
    # PSNR of the whole set of restorations (one image with no masked pixel is exact: its own PSNR is
    # infinite, and so would be a mean of per-image PSNRs); None when nothing at all was masked.
    mse = float(torch.stack([((o.restored - x) ** 2).mean() for o in outs]).mean())
    stats["psnr_db"] = 10 * math.log10(2.0**2 / mse) if mse > 0 else None
    stats["ssim"] = float(torch.stack([ssim(o.restored, x) for o in outs]).mean())
    if per_input > 1:  # spread of the restorations of one input: the model's uncertainty in the hole
        spread = torch.stack([o.restored for o in outs]).std(0)
        stats["masked_region_std_across_restorations"] = float((spread * hole).sum() / hole.sum().clamp(min=1))
    return grid, 2 + per_input, stats


@torch.no_grad()
def representation_cosine(model, state, images: torch.Tensor | None = None) -> dict[str, float]:
    """Each modality's scores of joint samples against their images (``Modality.sample_scores``): for a vector
    modality with an image extractor (Appendix E.4), the mean cosine between the representation the head
    generated and the extractor's representation of the generated image, and the same against the next
    sample's image as the chance level. ``images``: the samples in pixels; default ``state.z``, right when
    there is no autoencoder."""
    images = state.z if images is None else images
    out = {}
    for name, mod in model.modalities.items():
        if name in state.data:
            out.update(mod.sample_scores(state.data[name], images))
    return out
