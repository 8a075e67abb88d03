"""One call for every task, ``Run.generate(given=...)``: any subset of a run's modalities given, the rest generated.
The given values come back exactly; the sampler's math with several encodings known and unknown at once is
Algorithm 1's (and DDPM's with every aggregation weight zero); the old task methods are thin wrappers that
return what they returned before the change; ``mtdiff generate`` does the same on the command line."""

import importlib.util
import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_run
from PIL import Image

import mtdiff
from mtdiff.cli.main import main
from mtdiff.data.masking import apply_mask
from mtdiff.process import Bridge, Constant, MTProcess, beta_schedule
from mtdiff.sampling import generate_given, split_unknown
from mtdiff.viz import save_grid

FIXTURES = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_task_outputs", FIXTURES / "make_task_outputs.py")
task_outputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(task_outputs)

FIVE = [  # with the image: six things to give, every kind there is but text (which needs a text encoder)
    "data.image_size=16",
    "model.attention_resolutions=[]",
    "modalities.edges={kind: image, source: edges}",
    "modalities.seg={kind: segmentation, num_classes: 5, source: class_mask}",
    "modalities.label={kind: label, num_classes: 4}",
    "modalities.rep={kind: vector, dim: 3, hidden: 8}",
]


def values(n: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = lambda: torch.rand(n, 1, 16, 16, generator=g) * 2 - 1  # noqa: E731
    return {
        "image": image(),
        "masked": image(),
        "edges": image(),
        "seg": torch.randint(0, 5, (n, 16, 16), generator=g),
        "label": torch.randint(0, 4, (n,), generator=g),
        "rep": torch.randn(n, 3, generator=g),
    }


@pytest.fixture(scope="module")
def five():
    return task_outputs.seeded_run("mnist-masked-u", FIVE)


def _value(out, name):
    return out.images if name == "image" else out.data[name]


def test_every_subset_of_given_modalities_comes_back_exactly(five):
    """For each of the 64 subsets of {image, masked, edges, seg, label, rep}: the given values come back bit for bit,
    every modality has a value of its shape, and a different seed changes what was not given (and only that)."""
    v = values()
    assert list(five.model.modalities) == ["masked", "edges", "seg", "label", "rep"] and not five.model.conditioned
    for k in range(len(v) + 1):
        for subset in itertools.combinations(v, k):
            out = five.generate({n: v[n] for n in subset}, 2, steps=1, seed=k)
            assert out.given == subset and out.images.shape == (2, 1, 16, 16)
            assert set(out.data) == set(five.model.modalities), subset
            for n in subset:
                assert torch.equal(_value(out, n), v[n]), (subset, n)
    a, b = (five.generate({"label": v["label"], "seg": v["seg"]}, steps=1, seed=s) for s in (1, 2))
    assert torch.equal(a.data["seg"], b.data["seg"]) and not torch.equal(a.images, b.images)


def test_partly_given_values_keep_their_known_pixels(five):
    """(value, keep): the known pixels of the image come back exactly and its masked view is derived from them
    (restoration); a partly known class map or image modality keeps its known pixels in the result."""
    v = values()
    keep = torch.ones(2, 1, 16, 16)
    keep[:, :, 3:11, 5:13] = 0
    out = five.generate({"image": (v["image"], keep)}, steps=2, seed=0)
    assert torch.equal(out.images * keep, v["image"] * keep) and torch.equal(out.keep, keep)
    assert torch.equal(out.data["masked"], apply_mask(v["image"], keep))
    assert not torch.equal(out.images, v["image"]) and out.drift.shape == (2,)
    via_view = five.generate({"masked": (v["image"], keep)}, steps=2, seed=0)
    assert torch.equal(via_view.images, out.images)  # the masked view partly given is the same restoration
    out = five.generate({"seg": (v["seg"], keep[:, 0]), "edges": (v["edges"], keep)}, steps=2, seed=0)
    assert torch.equal(out.data["seg"].argmax(1) * keep[:, 0], v["seg"] * keep[:, 0])
    assert torch.equal(out.data["edges"] * keep, v["edges"] * keep)
    assert not torch.equal(out.data["edges"], v["edges"])


def test_backbone_inputs_not_given_are_generated_unless_they_are_images():
    """In the -X variant every modality is a backbone input. One not given is generated from its head with the
    backbone seeing its "nothing known" value (as when train.cond_drop_prob dropped it), unless its data are
    images (a masked image: a condition of the image): that one holds "nothing known" throughout."""
    from mtdiff.sampling import NullInputs

    run = task_outputs.seeded_run("mnist-masked-x", FIVE[:2] + FIVE[4:5])
    model = run.model
    assert set(model.conditioned) == {"masked", "label"}
    assert split_unknown(model, ["label"]) == ([], ["masked"])
    assert split_unknown(model, []) == (["label"], ["masked"])
    assert split_unknown(model, [], ["masked"]) == (["masked", "label"], [])
    out = run.generate({"label": 2}, 3, steps=1)
    assert torch.equal(out.data["masked"], model.null_data(["masked"], 3)["masked"])
    assert out.labels.tolist() == [2, 2, 2]
    joint = run.generate(None, 3, steps=2, seed=1)
    k = model.modalities["label"].num_classes
    assert joint.data["label"].shape == (3, k)
    assert not torch.equal(joint.data["label"], model.null_data(["label"], 3)["label"])
    seen = []  # what the backbone is given for the label: its null at every step, never the estimate
    real = model.predict
    model.predict = lambda z, t, data, enc=None: seen.append(data["label"].clone()) or real(z, t, data, enc)
    try:
        run.generate(None, 3, steps=2, seed=1)
    finally:
        del model.predict
    assert seen and all(torch.equal(x, model.null_data(["label"], 3)["label"]) for x in seen)
    wrapped = NullInputs(model, ["label"], 3)
    z, t = torch.randn(3, *model.z_shape), torch.full((3,), 5)
    data = {"masked": model.null_data(["masked"], 3)["masked"], "label": torch.eye(k)[[1, 2, 3]]}
    eps, _ = wrapped.predict(z, t, data)
    assert torch.equal(eps, model.predict(z, t, {**data, "label": model.null_data(["label"], 3)["label"]})[0])


# ---------------------------------------------------------------------------- the sampler's math, float64

T = 1000


class ToyModel:
    """A Denoiser on z [B, 2] with modalities "a", "b", "c" (E = identity), b's head estimating a function of z."""

    def __init__(self, eps_fn, head_fn):
        self.eps_fn, self.head_fn, self.conditioned = eps_fn, head_fn, ()
        self.modalities = {n: SimpleNamespace(has_head=True) for n in "abc"}

    def encode(self, data):
        return dict(data)

    def predict(self, z, t, data, enc=None):
        return self.eps_fn(z, t), {"b": self.head_fn(z, t)}

    def init_data(self, names, batch, *, generator, device):
        return {n: torch.full((batch, 2), 0.25) for n in names}

    def null_data(self, names, batch, *, device=None):
        return {n: torch.zeros(batch, 2) for n in names}


def _eps(z, t):
    return 0.3 * torch.tanh(z) + t.double()[:, None] / T


def _head(z, t):
    return torch.sin(z) * (1 + t.double()[:, None] / T)


def _run(process, known, generator):
    """Ancestral sampling, every step, with a and c known and b generated from its head; every z_t recorded."""
    model = ToyModel(_eps, _head)
    zs = []
    kw = {"sampler": "ancestral", "steps": None, "start": "standard", "clip": False, "generator": generator}
    state, _ = generate_given(
        model, process, batch=3, z_shape=(2,), known=known, callback=lambda k, t, st, z0: zs.append(st.z), **kw
    )
    return state, zs


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def test_y_chain_with_known_and_generated_encodings_is_algorithm_1(float64):
    """Each step with E_a, E_c known and E_b re-estimated from the head: Algorithm 1's line 11 with sqrt(beta~)
    noise for the fixed encodings, z_{t-1} = (z_t - (1 - a_t) / sqrt(1 - ab_t) eps) / sqrt(a_t) - sum_i w_t E_i,
    where for b the shift removed is the one that formed z_t (old E_b) and the one added uses the new E_b:
    - w_t E_b becomes alpha~_t E_b^old / sqrt(a_t) - alpha~_{t-1} E_b^new, which is w_t E_b when they agree."""
    betas = beta_schedule("linear", T)
    weights = {"a": Bridge(1.0), "b": Bridge(0.5), "c": Constant(0.02)}
    proc = MTProcess(betas, {n: s.weights(1 - betas) for n, s in weights.items()})
    g = torch.Generator().manual_seed(1)
    known = {"a": torch.randn(3, 2, generator=g), "c": torch.randn(3, 2, generator=g)}
    state, zs = _run(proc, known, torch.Generator().manual_seed(3))
    g2 = torch.Generator().manual_seed(3)
    z = torch.randn(3, 2, generator=g2)
    e_b = torch.full((3, 2), 0.25)
    a, ab, w, at = proc.alphas, proc.alphas_cumprod, proc.weights, proc.alpha_tilde
    for k, i in enumerate(range(T - 1, -1, -1)):
        tt = torch.full((3,), i)
        eps, new_b = _eps(z, tt), _head(z, tt)
        z = (z - (1 - a[i]) / (1 - ab[i]).sqrt() * eps) / a[i].sqrt()  # Algorithm 1, line 11
        z = z - w["a"][i] * known["a"] - w["c"][i] * known["c"]
        z = z - at["b"][i] * e_b / a[i].sqrt() + (at["b"][i - 1] * new_b if i > 0 else 0)
        if i > 0:
            z = z + proc.posterior_variance[i].sqrt() * torch.randn(3, 2, generator=g2)
        e_b = new_b
        torch.testing.assert_close(zs[k], z, rtol=1e-9, atol=1e-9)
    assert state.z.dtype == torch.float64
    torch.testing.assert_close(state.data["b"], e_b)
    assert torch.equal(state.data["a"], known["a"]) and torch.equal(state.data["c"], known["c"])


def test_all_weights_zero_is_ddpm_whatever_is_known(float64):
    """With every aggregation weight zero the encodings, known or generated, shift nothing: the chain is an
    independent DDPM (Ho et al. 2020, Algorithm 2, in numpy) on the same random stream."""
    betas = beta_schedule("linear", T)
    proc = MTProcess(betas, {n: Constant(0.0).weights(1 - betas) for n in "abc"})
    g = torch.Generator().manual_seed(1)
    known = {"a": torch.randn(3, 2, generator=g), "c": torch.randn(3, 2, generator=g)}
    state, _ = _run(proc, known, torch.Generator().manual_seed(7))
    b = betas.numpy()
    a, ab = 1 - b, np.cumprod(1 - b)
    g2 = torch.Generator().manual_seed(7)
    x = torch.randn(3, 2, generator=g2).numpy()
    for i in range(T - 1, -1, -1):
        eps = _eps(torch.from_numpy(x), torch.full((3,), i)).numpy()
        x = (x - b[i] / np.sqrt(1 - ab[i]) * eps) / np.sqrt(a[i])
        if i > 0:
            x = x + np.sqrt(b[i] * (1 - ab[i - 1]) / (1 - ab[i])) * torch.randn(3, 2, generator=g2).numpy()
    np.testing.assert_allclose(state.z.numpy(), x, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------- the old methods, unchanged


def test_old_task_methods_return_what_they_returned_before():
    """sample, restore, classify, translate and represent, now wrappers of generate, give exactly the tensors the
    code before the change gave for the same seeds (tests/fixtures/make_task_outputs.py wrote them)."""
    from safetensors.torch import load_file

    before = load_file(FIXTURES / "task_outputs.safetensors")
    now = task_outputs.outputs()
    assert sorted(now) == sorted(before)
    changed = [k for k in before if not torch.equal(now[k], before[k])]
    assert not changed, changed


def test_wrappers_are_generate_with_a_given_set():
    run = task_outputs.seeded_run("mnist-label-m", [])
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    classes = run.generate({"image": x}, t=3, seed=5)
    assert torch.equal(run.classify(x, t=3, seed=5), classes.data["label"])
    assert torch.equal(classes.images, x) and classes.labels.tolist() == classes.data["label"].argmax(1).tolist()
    a, b = run.sample(2, labels=[1, 2], steps=2, seed=4), run.generate({"label": [1, 2]}, steps=2, seed=4)
    assert torch.equal(a.images, b.images) and a.labels.tolist() == [1, 2] == b.labels.tolist()


@pytest.fixture(scope="module")
def guidable():
    return task_outputs.seeded_run("mnist-label-m", ["train.cond_drop_prob=0.1", "model.variant=X"])


@pytest.mark.parametrize(
    "given, n, expected",
    [
        ({"colour": 1}, None, "given: 'colour' is not a modality of this run; give any of ['image', 'label']"),
        ({"label": 10}, None, "given['label']: expected labels of class indices in [0, 10), got values in [10, 10]"),
        ({"label": "seven"}, None, "given['label']: expected class indices in [0, 10) or 'each', got 'seven'"),
        ({"label": [1, 2, 3]}, 2, "given['label']: expected labels of class indices in [0, 10) [1 or 2], got (3,)"),
        ({"label": [1, 2, 3], "image": torch.zeros(2, 1, 16, 16)}, None, "one row or n each (n = None), got {'label"),
        ({"image": torch.zeros(2, 3, 16, 16)}, None, "given['image'] must be [N, 1, 16, 16]"),
        ({"label": (1, torch.ones(1, 1, 16, 16))}, None, "only images and class maps in pixel space can be partly"),
        ({"image": (torch.zeros(2, 1, 16, 16), torch.ones(2, 16))}, None, "keep must be [2, 1, 16, 16] (1 = known)"),
        ({}, None, "n (the number of samples) is needed when nothing is given"),
        ({"image": torch.zeros(1, 1, 16, 16)}, None, "guidance and head_guidance steer sampling"),
        ({"label": 1}, 2, "give guidance or head_guidance, not both"),
    ],
)
def test_caller_errors_say_what_was_expected(guidable, given, n, expected):
    run = guidable
    guide = {"head_guidance": 1.0, "guidance": 2.0} if "guidance" in expected else {}
    with pytest.raises(mtdiff.MtdiffError) as e:
        run.generate(given, n, steps=1, **guide)
    assert expected in str(e.value)


# ---------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def label_run(tmp_path_factory):
    return str(tiny_run(tmp_path_factory.mktemp("gen") / "m", "mnist-label-m", "sample.steps=2", steps=1))


def test_cli_generate_end_to_end(label_run, tmp_path, capsys):
    """--given label=3 generates images of class 3 (as Run.generate does for the same seed); --given image=FOLDER
    reads the images' labels (inverse mode); each writes its grid and one JSON line."""
    assert (
        main(["generate", "--run", label_run, "--given", "label=3", "--num", "2", "--out", str(tmp_path / "g.png")])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["given"] == ["label"] and result["labels"] == [3, 3]
    same = mtdiff.load_run(label_run).generate({"label": 3}, 2)
    save_grid(same.images, tmp_path / "py.png", captions=same.captions)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), np.asarray(Image.open(tmp_path / "py.png")))
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    assert main(["generate", "--run", label_run, "--given", f"image={folder}", "--out", str(tmp_path / "c.png")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num"] == 3 and len(result["labels"]) == 3 and result["given"] == ["image"]


@pytest.mark.parametrize(
    "given, expected",
    [
        ("colour=3", "'colour' is not a modality of"),
        ("label=11", "given['label']: expected labels of class indices in [0, 10)"),
        ("label=seven", "expected class indices in [0, 10) or 'each', got 'seven'"),
        ("image=nowhere", "--given image=nowhere: no such PNG file or folder"),
        ("label", "expected NAME=VALUE"),
    ],
)
def test_cli_generate_errors_are_one_line(label_run, tmp_path, capsys, given, expected):
    try:
        code = main(["generate", "--run", label_run, "--given", given, "--out", str(tmp_path / "g.png")])
    except SystemExit as e:  # argparse's usage error
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    last = err.splitlines()[-1]  # argparse prints its usage lines first
    assert last.startswith("mtdiff generate: error:") and expected in last
