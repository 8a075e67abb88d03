"""Sample quality on frozen-network features: FID, sFID, KID, IS, precision and recall.

- FID: Frechet distance between Gaussians fitted to pooled features (Heusel et al. 2017).
- sFID: the same on spatial features of an intermediate layer (Nash et al. 2021).
- KID: unbiased MMD^2 with the cubic polynomial kernel, mean and std over subsets (Binkowski et al. 2018).
- IS: exp E_x KL(p(y|x) || p(y)) over splits (Salimans et al. 2016).
- precision / recall: k-NN manifold estimates (Kynkaanniemi et al. 2019, k = 3).

Generated samples are scored against the *whole* reference split; its features are computed once and
cached (:func:`reference_stats`). Only with the standard Inception network (``inception`` extractor)
are the names plain "FID", "IS", ...; otherwise they carry the extractor: "FID (EfficientNet-Lite0
features)", "IS (MNIST-CNN (ccexam) 10 digit classes)". All numbers depend on N: compare equal N only.

The Frechet distance is computed here in float64 from symmetric eigendecompositions rather than with
torchmetrics' ``FrechetInceptionDistance``: that class takes images and runs the extractor itself (no
cached reference features), forms covariances as sum x x^T - n mu mu^T (cancellation for large means)
and takes tr sqrt(S1 S2) from a general eigensolver on the non-symmetric S1 S2 (complex eigenvalues in
round-off, real parts kept). KID re-implements torchmetrics' ``poly_mmd`` batched over seeded subsets
(``KernelInceptionDistance`` draws them from the global RNG, one small kernel call each); the tests
check it against ``poly_mmd``. IS is computed from logits for the same reasons (images in, global RNG).
"""

from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "extract_features",
    "fid_from_features",
    "frechet_distance",
    "gaussian_stats",
    "inception_score",
    "kid",
    "metric_name",
    "precision_recall",
    "quality_scores",
    "reference_stats",
    "sample_quality",
]


def gaussian_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D], in float64."""
    x = torch.as_tensor(features).to(torch.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, D], got {tuple(x.shape)}")
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


@contextmanager
def _one_thread():
    """Threaded LAPACK eigensolvers stall (seconds for D = 343) when other processes share the cores;
    on one thread they take milliseconds to a few seconds for D <= 2048."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _psd_sqrt(s: Tensor) -> Tensor:
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between N(mu1, S1) and N(mu2, S2), float64.

    tr (S1 S2)^(1/2) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2))): the matrix is similar to S1 S2 but
    symmetric positive semi-definite, so its eigenvalues are real and clamped at 0.
    """
    mu1, s1, mu2, s2 = (torch.as_tensor(a).to(torch.float64) for a in (mu1, sigma1, mu2, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(
            f"shapes do not match: mu {tuple(mu1.shape)}, {tuple(mu2.shape)}; "
            f"sigma {tuple(s1.shape)}, {tuple(s2.shape)}"
        )
    with _one_thread():
        r1 = _psd_sqrt(s1)
        m = r1 @ s2 @ r1
        tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * tr_sqrt)


def fid_from_features(a: Tensor, b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to features a [N, D] and b [M, D]."""
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def _poly_mmd2(x: Tensor, y: Tensor, degree: int, gamma: float, coef: float) -> Tensor:
    """Unbiased MMD^2 [S] of S subset pairs x, y [S, m, D] with k(a, b) = (gamma a.b + coef)^degree
    (the U-statistic: diagonal terms of k(x, x), k(y, y) dropped)."""

    def k(a, b):
        return (a @ b.transpose(1, 2) * gamma + coef) ** degree

    def off_diagonal_sum(kk):
        return kk.sum((1, 2)) - kk.diagonal(dim1=1, dim2=2).sum(1)

    m = x.shape[1]
    return (off_diagonal_sum(k(x, x)) + off_diagonal_sum(k(y, y))) / (m * (m - 1)) - 2 * k(x, y).sum((1, 2)) / m**2


def kid(
    gen: Tensor,
    ref: Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: mean and std over ``subsets`` of the unbiased MMD^2 with k(x, y) = (gamma x.y + coef)^degree,
    gamma = 1 / D, on seeded random subsets of min(subset_size, N, M) of each set (torchmetrics' ``poly_mmd``,
    batched over subsets)."""
    gen, ref = torch.as_tensor(gen).double(), torch.as_tensor(ref).double()
    m = min(subset_size, len(gen), len(ref))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {len(gen)} and {len(ref)}")
    g = torch.Generator().manual_seed(seed)
    idx = [
        (torch.randperm(len(ref), generator=g)[:m], torch.randperm(len(gen), generator=g)[:m]) for _ in range(subsets)
    ]
    step = max(1, 10_000_000 // m**2)  # kernel matrices of at most ~80 MB at a time
    gamma = 1.0 / gen.shape[1] if gamma is None else gamma
    scores = torch.cat(
        [
            _poly_mmd2(
                torch.stack([ref[i] for i, _ in idx[s : s + step]]),
                torch.stack([gen[j] for _, j in idx[s : s + step]]),
                degree,
                gamma,
                coef,
            )
            for s in range(0, subsets, step)
        ]
    )
    return float(scores.mean()), float(scores.std(unbiased=False))


def inception_score(logits: Tensor, *, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """IS = exp E_x KL(p(y|x) || p(y)), p(y) the mean over each split; mean and std over ``splits``
    of a seeded shuffle. 1 when every prediction is the same; K for confident predictions spread
    evenly over K classes."""
    logits = torch.as_tensor(logits).double()
    if logits.ndim != 2 or len(logits) < splits:
        raise ValueError(f"need logits [N >= splits={splits}, K], got {tuple(logits.shape)}")
    p = logits[torch.randperm(len(logits), generator=torch.Generator().manual_seed(seed))].softmax(1)
    scores = []
    for part in p.chunk(splits):
        marginal = part.mean(0, keepdim=True)
        kl = torch.special.xlogy(part, part) - torch.special.xlogy(part, marginal)  # 0 log 0 = 0
        scores.append(kl.sum(1).mean().exp())
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(unbiased=False))


def _knn_radii(x: Tensor, k: int, chunk: int) -> Tensor:
    """Distance of each row of x to its k-th nearest other row."""
    return torch.cat(
        [
            torch.cdist(x[i : i + chunk], x).topk(k + 1, dim=1, largest=False).values[:, -1]
            for i in range(0, len(x), chunk)
        ]
    )  # the nearest is the point itself


def _covered(x: Tensor, centres: Tensor, radii: Tensor, chunk: int) -> Tensor:
    """Whether each row of x lies in at least one ball (centres, radii)."""
    return torch.cat([(torch.cdist(x[i : i + chunk], centres) <= radii).any(1) for i in range(0, len(x), chunk)])


def precision_recall(
    gen: Tensor, ref: Tensor, *, k: int = 3, ref_radii: Tensor | None = None, chunk: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): the manifold of a set is the union of
    balls around its points reaching their k-th nearest neighbour; precision = fraction of generated
    samples inside the reference manifold, recall = fraction of reference samples inside the generated one.
    Both depend on the set sizes (denser sets, smaller balls): compare them at equal sizes only.
    ``ref_radii``: the reference's k-NN radii, if already known (``reference_stats`` caches them)."""
    gen, ref = torch.as_tensor(gen).double(), torch.as_tensor(ref).double()
    if min(len(gen), len(ref)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, got {len(gen)}, {len(ref)}")
    radii = _knn_radii(ref, k, chunk) if ref_radii is None else torch.as_tensor(ref_radii).double()
    precision = _covered(gen, ref, radii, chunk).double().mean()
    recall = _covered(ref, gen, _knn_radii(gen, k, chunk), chunk).double().mean()
    return float(precision), float(recall)


def _batches(images, batch_size: int):
    """Float image batches in [-1, 1] from a tensor [N, C, H, W] or an ImageSet (uint8, ``to_float``)."""
    n = len(images)
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        yield images.to_float(idx) if hasattr(images, "to_float") else images[idx]


@torch.no_grad()
def extract_features(extractor, images, *, batch_size: int = 250) -> dict[str, Tensor]:
    """``extractor.extract`` over images (tensor in [-1, 1] or ImageSet) in batches, concatenated on the CPU
    (float32)."""
    parts: dict[str, list[Tensor]] = {}
    for x in _batches(images, batch_size):
        for key, v in extractor.extract(x).items():
            parts.setdefault(key, []).append(v.float().cpu())
    return {key: torch.cat(v) for key, v in parts.items()}


def _ref_from_features(feats: dict[str, Tensor], k: int = 3, splits: int = 10) -> dict[str, Tensor]:
    ref = {"features": feats["features"], "n": torch.tensor(len(feats["features"])), "k": torch.tensor(k)}
    if len(feats["features"]) > k:
        ref["radii"] = _knn_radii(feats["features"].double(), k, 1024)
    if "spatial" in feats:
        ref["spatial_mu"], ref["spatial_sigma"] = gaussian_stats(feats["spatial"])
    if "logits" in feats and len(feats["logits"]) >= splits:
        ref["inception_score"] = torch.tensor(inception_score(feats["logits"], splits=splits)[0])
    return ref


def reference_stats(
    extractor, data, *, cache_dir: str | Path | None = None, batch_size: int = 250, k: int = 3
) -> dict[str, Tensor]:
    """Reference statistics of a whole split: pooled features [N, D] (for FID, KID, precision/recall) and
    their k-NN radii, the spatial Gaussian (sFID) and the reference's own IS. With ``cache_dir`` they are
    read from / written to ``<extractor>-<data name>-<N>-<SHA-256 of the pixels>.npz`` there, so they are
    computed once per extractor and image set."""
    name = re.sub(r"[^A-Za-z0-9.]+", "_", getattr(data, "name", "") or "images")
    pixels = (data.images if hasattr(data, "images") else torch.as_tensor(data)).detach().cpu().contiguous()
    digest = hashlib.sha256(pixels.numpy()).hexdigest()[:12]
    path = Path(cache_dir) / f"{extractor.name}-{name}-{len(data)}-{digest}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            if str(z["extractor"]) == extractor.name and int(z["n"]) == len(data) and int(z["k"]) == k:
                return {key: torch.from_numpy(z[key]) for key in z.files if key != "extractor"}
    ref = _ref_from_features(extract_features(extractor, data, batch_size=batch_size), k)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, extractor=np.array(extractor.name), **{key: v.numpy() for key, v in ref.items()})
        tmp.replace(path)
    return ref


def quality_scores(
    gen: dict[str, Tensor],
    ref: dict[str, Tensor],
    *,
    k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    is_splits: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Scores from generated features (``extract_features``) and reference stats (``reference_stats``).

    Keys: FID, KID, KID_std, precision, recall (all generated vs all reference samples, as torch-fidelity),
    and where the extractor gives them sFID, IS, IS_std (over ``is_splits`` splits, fewer when N < 10 per
    split), IS_reference (the reference split's own IS, the ceiling to read IS against).
    """
    fg, fr = gen["features"].double(), ref["features"].double()
    out = {"FID": fid_from_features(fg, fr)}
    if "spatial" in gen and "spatial_mu" in ref:
        out["sFID"] = frechet_distance(*gaussian_stats(gen["spatial"]), ref["spatial_mu"], ref["spatial_sigma"])
    out["KID"], out["KID_std"] = kid(fg, fr, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    radii = ref.get("radii") if int(ref.get("k", -1)) == k else None
    out["precision"], out["recall"] = precision_recall(fg, fr, k=k, ref_radii=radii)
    if "logits" in gen:
        splits = max(1, min(is_splits, len(gen["logits"]) // 10))  # at least 10 samples a split
        out["IS"], out["IS_std"] = inception_score(gen["logits"], splits=splits, seed=seed)
        if "inception_score" in ref:
            out["IS_reference"] = float(ref["inception_score"])
    return out


def metric_name(metric: str, extractor) -> str:
    """ "FID" on the standard Inception network; "FID (EfficientNet-Lite0 features)" on any other."""
    if extractor.name == "inception":
        return metric
    base, _, rest = metric.partition("_")
    label = extractor.classes_label if base == "IS" else extractor.label
    return f"{base} ({label})" + (f" {rest}" if rest else "")


def sample_quality(
    gen_images: Tensor,
    ref,
    extractor,
    *,
    k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    is_splits: int = 10,
    seed: int = 0,
    batch_size: int = 250,
    cache_dir: str | Path | None = None,
) -> dict:
    """All quality metrics of generated images [N, C, H, W] in [-1, 1] against ``ref``: an ImageSet or
    image tensor (the full reference split) or the dict of :func:`reference_stats`. Metric names carry
    the extractor's label (see :func:`metric_name`); ``n``, ``n_reference``, ``extractor`` describe the run."""
    if not isinstance(ref, dict):
        ref = reference_stats(extractor, ref, cache_dir=cache_dir, batch_size=batch_size, k=k)
    gen = extract_features(extractor, gen_images, batch_size=batch_size)
    scores = quality_scores(
        gen, ref, k=k, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, is_splits=is_splits, seed=seed
    )
    named = {metric_name(m, extractor): v for m, v in scores.items()}
    return {
        **named,
        "n": len(gen["features"]),
        "n_reference": int(ref["n"]),
        "extractor": extractor.name,
        "extractor_label": extractor.label,
        "precision_recall_k": k,
        "kid_subset_size": min(kid_subset_size, len(gen["features"]), int(ref["n"])),
    }
