"""A new modality kind is one file: the kind below (a digit's parity, a two-class "coarse label") is defined here
and nowhere else, and config validation, the builder, training, ``Run.generate`` with it given and generated,
drawing it, class-conditional sampling, classification, the report and the evaluations take it as they take the
built-in kinds. Each of those would fail if the code outside ``mtdiff.modalities`` still asked for a kind by its
name ("label") instead of asking the kind (its ``value``, ``askable_classes``, ``describe``, ``draw``, ...)."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import paired_folder, tiny, tiny_run, toy_images

from mtdiff.config import ConfigError
from mtdiff.modalities import MODALITY_KINDS, Modality

NAMES = ("even", "odd")


def _define():
    """The kind: what a user gives and gets back is a class (``value``), so it is the run's class modality."""

    class ParityModality(Modality):
        """A digit's parity [B] (0 even, 1 odd) from its label; E: a fixed random image per parity, mixed by the
        probabilities; head: an MLP on the middle block; cross-entropy likelihood."""

        kind = "parity"
        value = "class"
        head_choices = ("middle",)
        encoder_choices = ("fixed",)
        default_source = "label"
        variant_heads = {"M": "middle"}  # it serves MT-Diffusion-M as a label does
        num_classes = 2

        @classmethod
        def config_options(cls, mc, *, context_dim, latent):
            return {"seed": mc.seed, "hidden": mc.hidden}

        @classmethod
        def check_data(cls, mc, data, *, key):
            if data.labels is None:
                raise ValueError(f"{key} is a parity modality but {data.name!r} has no labels")

        def __init__(self, name, *, seed: int = 0, hidden: int = 0, **kw):
            super().__init__(name, **kw)
            self.decoder = self._build_head(2, hidden=hidden)
            g = torch.Generator().manual_seed(seed)
            self.register_buffer("parity_images", torch.randn(2, *self.z_shape, generator=g))

        def derive(self, batch, generator, rows=slice(None)):
            return batch[self.source][rows] % 2

        def canonical(self, x):
            return F.one_hot(x.long(), 2).float() if not x.is_floating_point() else x.float()

        def null(self, batch, *, device=None, dtype=torch.float32):
            return torch.full((batch, 2), 0.5, device=device, dtype=dtype)

        def given(self, value, batch=None):
            """ "even", "odd", 0 or 1: one for all or one per sample."""
            items = [value] if isinstance(value, (str, int)) else list(value)
            x = torch.tensor([NAMES.index(v) if isinstance(v, str) else int(v) for v in items])
            if batch is not None and len(x) not in (1, batch):
                raise ValueError(f"expected one parity or {batch}, got {len(x)}")
            return x

        def askable_classes(self):
            return 2

        def ask_classes(self, classes):
            return classes % 2, [NAMES[int(k) % 2] for k in classes]

        def describe(self, x):
            return [NAMES[int(k)] for k in (x.argmax(1) if x.is_floating_point() else x)]

        def draw(self, x):
            """A black tile for even, a white one for odd."""
            odd = (x.argmax(1) if x.is_floating_point() else x).float() * 2 - 1
            return odd.reshape(-1, 1, 1, 1).expand(-1, 1, *self.z_shape[1:])

        def sample_scores(self, generated, images):
            return {f"{self.name}_odd_fraction": float(generated.argmax(1).float().mean())}

        def encode(self, x, backbone_encode=None):
            return torch.einsum("bk,kchw->bchw", self.canonical(x), self.parity_images)

        def loss(self, pred, x):
            return -(self.canonical(x) * F.log_softmax(pred.float(), dim=1)).sum(1)

        def estimate(self, pred):
            return F.softmax(pred.float(), dim=1)

    return ParityModality


@pytest.fixture(scope="module")
def kind():
    cls = _define()
    try:
        yield cls
    finally:
        MODALITY_KINDS.pop("parity", None)


@pytest.fixture(scope="module")
def run_dir(kind, tmp_path_factory):
    """Two training steps of the single-task preset with the new kind added."""
    out = tmp_path_factory.mktemp("parity") / "run"
    return tiny_run(out, "mnist-ddpm", "modalities.p.kind=parity", "train.log_every=1", "sample.steps=2", steps=2)


@pytest.fixture(scope="module")
def run(run_dir):
    from mtdiff.runs import load_run

    return load_run(run_dir)


def test_the_kind_is_defined_here_only(kind):
    assert MODALITY_KINDS["parity"] is kind and kind.__module__ == __name__


def test_config_validation_and_the_builder_ask_the_kind(kind):
    from mtdiff.build import build_model

    cfg = tiny("mnist-ddpm", "modalities.p.kind=parity")
    mc = cfg.modalities["p"]
    assert (mc.head, mc.encoder, mc.source) == ("middle", "fixed", "label")
    with pytest.raises(ConfigError, match=r"modalities.p.encoder: 'backbone' is not valid for kind 'parity'"):
        tiny("mnist-ddpm", "modalities.p.kind=parity", "modalities.p.encoder=backbone")
    # the paper's variant M needs a kind with a head for it: the new kind serves, as a label does
    assert tiny("mnist-ddpm", "model.variant=M", "modalities.p.kind=parity").modalities["p"].head == "middle"
    with pytest.raises(ConfigError, match=r"model.variant='E' \(MT-Diffusion-E\) needs a modality of kind 'label'"):
        tiny("mnist-ddpm", "model.variant=E", "modalities.p.kind=parity")
    mod = build_model(tiny("mnist-ddpm", "modalities.p.kind=parity", "modalities.p.seed=3")).modalities["p"]
    assert isinstance(mod, kind)
    assert torch.equal(mod.parity_images, torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(3)))


def test_the_data_checks_are_the_kind_s(kind, tmp_path):
    """What ``load_data`` checks of the data, it asks each kind: an unlabelled set is refused for parities."""
    from mtdiff.build import load_data, resolve_class_names

    data = ["data.source=paired", f"data.root={paired_folder(tmp_path / 'p')}", "data.image_size=16", "data.channels=3"]
    with pytest.raises(ConfigError, match=r"modalities.p is a parity modality but '.*' has no labels"):
        load_data(tiny("mnist-ddpm", "modalities.p.kind=parity", *data))
    assert load_data(tiny("mnist-ddpm", *data)).labels is None  # without it, the same data loads
    cfg = tiny("mnist-ddpm", "modalities.p.kind=parity")
    resolve_class_names(cfg, toy_images(4, labels=False))  # nothing the kind leaves to the data: no error


def test_it_trains(run_dir):
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    terms = [r["p"] for r in log if "p" in r]
    assert terms and all(torch.isfinite(torch.tensor(terms)))


def test_generate_with_it_given_and_generated(run):
    given = run.generate({"p": "odd"}, 2, steps=2, seed=0)
    assert given.given == ("p",)
    assert given.labels.tolist() == [1, 1] and given.captions == ["odd", "odd"]  # the class modality's labels
    free = run.generate(None, 2, steps=2, seed=0)
    p = free.data["p"]
    assert p.shape == (2, 2) and torch.allclose(p.sum(1), torch.ones(2))
    assert free.captions == [NAMES[int(k)] for k in p.argmax(1)]
    guided = run.generate({"p": [0, 1]}, 2, steps=2, seed=0, head_guidance=1.0)  # by the kind's own head
    assert guided.labels.tolist() == [0, 1]
    with pytest.raises(Exception, match=r"given\['p'\]: expected one parity or 2, got 3"):
        run.generate({"p": [0, 1, 0]}, 2, steps=2)


def test_classes_are_asked_through_it(run):
    from mtdiff.runs import num_classes

    assert num_classes(run.model) == 2
    out = run.sample(4, labels="each", steps=2, seed=0)
    assert out.labels.tolist() == [0, 1, 0, 1] and out.captions == ["even", "odd", "even", "odd"]
    probs = run.classify(toy_images(3).to_float(), seed=0)  # read back by its head (inverse mode)
    assert probs.shape == (3, 2)


def test_drawing_it(run, tmp_path):
    from mtdiff.viz import save_grid

    mod, out = run.model.modalities["p"], run.generate({"p": [0, 1]}, 2, steps=2)
    picture = mod.draw(out.data["p"])
    assert picture.shape == (2, 1, 32, 32) and picture[0].eq(-1).all() and picture[1].eq(1).all()
    save_grid(torch.cat([out.images, picture]), tmp_path / "g.png", nrow=2, captions=mod.describe(out.data["p"]) * 2)
    assert (tmp_path / "g.png").stat().st_size > 0


def test_the_evaluations_and_the_report_take_it(run, run_dir, tmp_path):
    from mtdiff.evaluate import classify, representation_cosine
    from mtdiff.report import write_report

    data = toy_images(6)
    scores = classify(run, data, num=6, seed=0)  # against the kind's own data: the labels' parity
    assert scores["n"] == 6 and 0 <= scores["accuracy"] <= 1
    out = run.generate(None, 2, steps=2)
    assert set(representation_cosine(run.model, out, out.images)) == {"p_odd_fraction"}
    page = write_report(run_dir, tmp_path / "report.html", num=2, steps=2, test=data).read_text()
    assert "Class-conditional samples" in page and "p_odd_fraction" in page
