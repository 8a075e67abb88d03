"""Modality kinds: the deterministic "nothing known" value (``null``) apart from the sampler's random start
(``init_unknown``), classifier-free guidance reproducible from a seed, and the kind registry (a new kind is
one subclass, known to config validation and to the builder without touching another file)."""

import json

import pytest
import torch
from conftest import tiny

from mtdiff.build import build_model, build_process
from mtdiff.config import ConfigError
from mtdiff.data import ImageSet
from mtdiff.modalities import MODALITY_KINDS, Modality

# one modality "m" of every built-in kind on the single-task preset, and its "nothing known" value
KINDS = {
    "image": ([], 0.0),
    "masked_image": ([], 0.0),  # the complete mask (Section 4.1)
    "label": (["modalities.m.num_classes=4"], 0.25),  # the uniform distribution
    "segmentation": (["modalities.m.num_classes=3"], 1 / 3),  # uniform per pixel
    "vector": (["modalities.m.dim=6"], 0.0),  # E(0) = 0
    "text": ([], 0.0),  # no caption
}


def _modality(kind: str) -> Modality:
    extra, _ = KINDS[kind]
    return build_model(tiny("mnist-ddpm", f"modalities.m.kind={kind}", *extra)).modalities["m"]


def test_every_built_in_kind_is_covered():
    assert set(KINDS) == {k for k, cls in MODALITY_KINDS.items() if cls.__module__.startswith("mtdiff.")}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_null_is_fixed_and_never_touches_the_global_rng(kind):
    """The same value every call, from no random draw: condition dropout (also under DDP, where each process
    drops its own rows) and the unconditional branch of guidance agree with each other and with a seed."""
    mod = _modality(kind)
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    a, b = mod.null(3, device="cpu"), mod.null(3, device="cpu")
    x = mod.canonical(mod.null(3)) + 1.0
    dropped = mod.drop(x, torch.tensor([True, False, True]))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a, b) and a.shape[0] == 3 and a.dtype == torch.float32
    assert bool((a == torch.tensor(KINDS[kind][1])).all()), a.unique()
    assert torch.equal(dropped[[0, 2]], a[[0, 2]]) and torch.equal(dropped[1], x[1])
    assert mod.null(2, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_init_unknown_draws_only_from_its_generator(kind):
    """The sampler's start: reproducible from the generator, the global RNG untouched."""
    mod = _modality(kind)
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    a = mod.init_unknown(3, generator=torch.Generator().manual_seed(1), device="cpu")
    b = mod.init_unknown(3, generator=torch.Generator().manual_seed(1), device="cpu")
    assert torch.equal(torch.random.get_rng_state(), before) and torch.equal(a, b)


def _edges_model():
    """A tiny image-conditioned -X model (edges -> image) with random weights: every input matters."""
    cfg = tiny("fashion-edges2img", "train.cond_drop_prob=0.2")
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05, generator=g)
    return model, build_process(cfg)


def test_classifier_free_guidance_is_reproducible_from_the_seed():
    """Guided sampling of an image-conditioned model: bit-identical images for one seed whatever the global
    RNG did in between (and so the same on every process), different images for another seed."""
    from mtdiff.sampling import ClassifierFreeGuidance, generate_conditional

    model, proc = _edges_model()
    guided = ClassifierFreeGuidance(model, 3.0)
    edges = torch.where(torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(5)) > 0.8, 1.0, -1.0)

    def sample(seed: int, disturb: int) -> torch.Tensor:
        torch.manual_seed(disturb)
        torch.rand(disturb)
        return generate_conditional(
            guided,
            proc,
            known={"edges": edges},
            batch=2,
            sampler="ancestral",
            steps=4,
            eta=1.0,
            generator=torch.Generator().manual_seed(seed),
        ).z

    first = sample(0, 1)
    assert torch.equal(sample(0, 2), first)
    assert not torch.allclose(sample(1, 1), first)


def test_unconditional_branch_is_the_null_input():
    from mtdiff.sampling import ClassifierFreeGuidance

    model, _ = _edges_model()
    z, t = torch.randn(2, 1, 32, 32), torch.full((2,), 500)
    data = {"edges": torch.ones(2, 1, 32, 32)}
    eps_u, _ = model.predict(z, t, {"edges": model.modalities["edges"].null(2)}, model.encode(data))
    torch.testing.assert_close(ClassifierFreeGuidance(model, 0.0).predict(z, t, data)[0], eps_u)


# ---------------------------------------------------------------------------- the registry


@pytest.fixture
def scalar_kind():
    """A test-only kind, defined here and nowhere else: the image's mean brightness [B, 1], fixed linear encoder."""

    class ScalarModality(Modality):
        kind = "scalar"
        value = "vector"  # a one-number vector
        head_choices = ("middle",)
        encoder_choices = ("fixed",)
        default_source = "brightness"

        def __init__(self, name, *, seed: int = 0, hidden: int = 0, **kw):
            super().__init__(name, **kw)
            self.decoder = self._build_head(1, hidden=hidden)
            self.register_buffer("direction", torch.randn(self.z_shape, generator=torch.Generator().manual_seed(seed)))

        @classmethod
        def config_options(cls, mc, *, context_dim: int, latent: bool) -> dict:
            return {"seed": mc.seed, "hidden": mc.hidden}

        def derive(self, batch, generator, rows=slice(None)):
            return batch["image"][rows].float().mean((1, 2, 3))[:, None]

        def null(self, batch, *, device=None, dtype=torch.float32):
            return torch.zeros(batch, 1, device=device, dtype=dtype)

        def encode(self, x, backbone_encode=None):
            return x.float()[:, :, None, None] * self.direction

        def loss(self, pred, x):
            return ((pred.float() - x.float()) ** 2).mean(1)

        def estimate(self, pred):
            return pred.float()

    try:
        yield ScalarModality
    finally:
        MODALITY_KINDS.pop("scalar", None)


def test_a_new_kind_is_one_subclass(scalar_kind, tmp_path):
    """Config validation resolves its choices from the class, the builder builds it, and it trains a step."""
    from mtdiff.train import Trainer

    assert MODALITY_KINDS["scalar"] is scalar_kind
    with pytest.raises(
        ConfigError, match=r"modalities.s.head: 'output' is not valid for kind 'scalar'; choose one of \['middle'\]"
    ):
        tiny("mnist-masked-u", "modalities.s.kind=scalar", "modalities.s.head=output")
    cfg = tiny(
        "mnist-masked-u",
        "modalities.s.kind=scalar",
        "modalities.s.seed=3",
        "train.steps=1",
        "train.ckpt_every=1",
        "train.log_every=1",
        "train.sample_every=0",
        "train.batch_size=4",
        "train.warmup_steps=1",
    )
    mc = cfg.modalities["s"]
    assert (mc.head, mc.encoder, mc.source) == ("middle", "fixed", "brightness")
    g = torch.Generator().manual_seed(0)
    data = ImageSet((torch.rand(8, 1, 32, 32, generator=g) * 255).to(torch.uint8), None, [], "toy")
    trainer = Trainer(cfg, tmp_path / "r", data=data, progress=False)
    mod = trainer.model.modalities["s"]
    assert isinstance(mod, scalar_kind) and mod.head_name == "middle"
    assert torch.equal(mod.direction, torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(3)))
    trainer.run()
    log = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[-1])
    assert log["step"] == 1 and torch.isfinite(torch.tensor(log["s"]))


def test_unknown_kinds_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"modalities.m.kind: 'audio' is not valid; choose one of \[.*'label'"):
        tiny("mnist-ddpm", "modalities.m.kind=audio")


@pytest.mark.parametrize("preset", ["mnist-demo", "mnist-label-m", "mnist-seg2img", "fashion-edges2img"])
def test_a_process_derives_only_its_rows_but_draws_for_the_whole_batch(preset):
    """Under torchrun each process derives the modality data of its own rows of the global batch; what it gets
    is those rows of the whole batch's data, and its generator advances as if it had derived them all."""
    model = build_model(tiny(preset))
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(8, 1, 32, 32, generator=g) * 2 - 1, "label": torch.randint(0, 10, (8,), generator=g)}
    whole, mine = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    full, part = model.derive(batch, whole), model.derive(batch, mine, slice(2, 6))
    assert part.keys() == full.keys() and full
    for name in full:
        assert part[name].shape[0] == 4
        torch.testing.assert_close(part[name], full[name][2:6], rtol=0, atol=0)
    assert torch.equal(whole.get_state(), mine.get_state())
