"""Task metrics against closed forms: PSNR of a known MSE, SSIM(x, x) = 1, errors split by a keep mask,
ECE of calibrated and overconfident predictions, cosine of identical sets; LPIPS against torchmetrics'
own LPIPS with the same backbone weights, and its missing-file error."""

import math

import pytest
import torch

from mtdiff.metrics.task import (
    calibration,
    feature_distance,
    masked_errors,
    perceptual_distance,
    psnr,
    representation_cosine,
    ssim,
)
from mtdiff.pretrained.errors import MissingExtractorError
from mtdiff.pretrained.lpips import LPIPS_WEIGHTS_ENV, backbone, load_lpips


def test_psnr_of_a_known_mse():
    target = torch.zeros(3, 1, 8, 8, dtype=torch.float64)
    pred = target + torch.tensor([0.1, 0.2, 0.5], dtype=torch.float64)[:, None, None, None]
    expected = [10 * math.log10(2.0**2 / c**2) for c in (0.1, 0.2, 0.5)]  # data range 2: [-1, 1]
    assert psnr(pred, target).tolist() == pytest.approx(expected, rel=1e-6)  # torchmetrics: 10 / ln 10 in float32


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-9)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    assert (ssim(noisy, x) < 0.9).all()


def test_masked_and_unmasked_errors_are_split_by_the_keep_mask():
    target = torch.zeros(2, 3, 4, 4)
    keep = torch.zeros(2, 1, 4, 4)
    keep[..., :2] = 1  # left half known
    pred = target + torch.where(keep.bool(), 0.1, 0.5).expand(-1, 3, -1, -1)
    errs = masked_errors(pred, target, keep)
    assert errs["mse_unmasked"] == pytest.approx(0.01) and errs["mse_masked"] == pytest.approx(0.25)
    assert math.isnan(masked_errors(pred, target, torch.ones_like(keep))["mse_masked"])


def test_ece_of_calibrated_and_overconfident_predictions():
    calibrated = calibration(torch.tensor([[0.7, 0.3]]).repeat(10, 1), torch.tensor([0] * 7 + [1] * 3))
    assert calibrated["accuracy"] == pytest.approx(0.7) and calibrated["ece"] == pytest.approx(0, abs=1e-6)
    # two bins: confidence 0.9 with accuracy 0.5, confidence 0.6 with accuracy 0.6
    probs = torch.tensor([[0.9, 0.1]] * 10 + [[0.4, 0.6]] * 10)
    labels = torch.tensor([0] * 5 + [1] * 5 + [1] * 6 + [0] * 4)
    over = calibration(probs, labels)
    assert over["accuracy"] == pytest.approx(0.55) and over["ece"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.0, abs=1e-6)
    with pytest.raises(ValueError, match="softmax"):
        calibration(torch.randn(4, 3) * 5, torch.zeros(4, dtype=torch.long))


def test_representation_cosine():
    a = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    assert representation_cosine(a, a) == pytest.approx(1.0)
    assert representation_cosine(a, 3 * a) == pytest.approx(1.0)
    assert representation_cosine(a, -a) == pytest.approx(-1.0)
    assert representation_cosine(torch.eye(2), torch.eye(2).flip(0)) == pytest.approx(0.0)


class _Pixels(torch.nn.Module):
    name, label = "pixels", "pixel features"

    def spatial(self, x):
        return x.flatten(1)


def test_feature_distance_is_named_for_its_extractor_and_zero_on_identical_images():
    x = torch.rand(3, 1, 4, 4) + 0.1
    assert torch.allclose(feature_distance(x, x, _Pixels()), torch.zeros(3, dtype=torch.float64))
    # unit-normalised: scaling an image does not move it; an orthogonal image is sqrt(2) away
    assert torch.allclose(feature_distance(x, 2 * x, _Pixels()), torch.zeros(3, dtype=torch.float64))
    e1, e2 = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    e1[..., 0, 0], e2[..., 1, 1] = 1, 1
    assert perceptual_distance(e1, e2, extractor=_Pixels()) == pytest.approx(
        {"feature distance (pixel features)": 2**0.5}
    )


def test_lpips_equals_torchmetrics_lpips_with_the_same_backbone_weights(tmp_path, monkeypatch):
    import torchmetrics.functional.image.lpips as tm

    torch.manual_seed(0)
    features = backbone("alex")
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    monkeypatch.setattr(tm, "_get_tv_model_features", lambda net, pretrained=False: features)  # no torchvision here
    reference = tm._LPIPS(pretrained=True, net="alex").eval()
    ours = load_lpips("alex", path)
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ours(x, y), reference(x, y).flatten(), rtol=1e-5, atol=1e-7)
        assert torch.equal(ours(x, x), torch.zeros(2))
    assert list(perceptual_distance(x, y, lpips=ours)) == ["LPIPS (alex)"]


def test_lpips_without_weights_names_the_file(monkeypatch):
    monkeypatch.delenv(LPIPS_WEIGHTS_ENV, raising=False)
    with pytest.raises(MissingExtractorError, match="alexnet-owt-7be5be79.pth"):
        load_lpips("alex")
    with pytest.raises(MissingExtractorError, match="vgg16-397923af.pth"):
        load_lpips("vgg", weights="/nonexistent/vgg16.pth")
