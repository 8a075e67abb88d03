"""Configs fail before any work, naming the key, the value and the valid choices."""

import pytest

from mtdiff.build import build_model
from mtdiff.config import Config, ConfigError, from_dict, load_config, presets, to_dict

PRESETS = [
    "mnist-masked-x",
    "mnist-masked-u",
    "mnist-ddpm",
    "mnist-demo",
    "mnist-label-m",
    "mnist-label-e",
    "mnist-seg2img",
    "fashion-edges2img",
]


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_build_and_round_trip(name):
    cfg = load_config(name)
    build_model(cfg)
    assert from_dict(Config, to_dict(cfg)) == cfg


def test_presets_are_listed():
    assert set(PRESETS) <= set(presets())


@pytest.mark.parametrize(
    "override,needle",
    [
        ("train.lrr=1", "unknown key 'train.lrr'; valid keys in train: ['steps'"),
        ("trian.lr=1", "unknown key 'trian'"),
        ("train.steps=abc", "train.steps: expected an integer, got 'abc'"),
        ("train.steps=1.5", "train.steps: expected an integer"),
        ("model.variant=Z", "model.variant: 'Z' is not valid; choose one of ['U', 'X', 'M', 'E']"),
        ("model.variant=E", "needs a modality of kind 'label'"),
        ("model.channel_mult=3", "model.channel_mult: expected a list"),
        ("modalities.masked.head=middle", "modalities.masked.head: 'middle' is not valid for kind 'masked_image'"),
        ("modalities.masked.kind=audio", "modalities.masked.kind: 'audio' is not valid"),
        ("modalities.v.kind=vector", "modalities.v.dim must be > 0"),
        ("sample.steps=5000", "sample.steps must be in [1, diffusion.timesteps=1000]"),
        ("train.device=tpu", "train.device: 'tpu' is not valid"),
        ("data.source=folder", "needs data.root"),
        ("train.batch_size=0", "train.batch_size must be > 0"),
        ("model.dropout=[1]", "model.dropout: expected a number"),
        ("nonsense", "must look like key.path=value"),
        ("train.cond_drop_prob=1.5", "train.cond_drop_prob must be in [0, 1]"),
    ],
)
def test_bad_configs_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("mnist-masked-x", [override])
    assert needle in str(e.value)


def test_e_variant_with_label_head_conflict():
    with pytest.raises(ConfigError, match="contradicts model.variant='E'"):
        load_config("mnist-masked-u", ["modalities.y.kind=label", "modalities.y.head=middle", "model.variant=E"])
    cfg = load_config("mnist-masked-u", ["modalities.y.kind=label", "model.variant=E"])
    assert cfg.modalities["y"].head == "classifier" and cfg.modalities["y"].source == "label"


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="mnist-masked-x"):
        load_config("no-such-preset")


def test_exponent_floats_from_yaml_are_numbers():
    assert load_config("mnist-masked-x", ["train.lr=2e-3"]).train.lr == 0.002


def test_backbone_encoder_needs_the_x_variant():
    with pytest.raises(ConfigError, match="cross-attention stays zero"):
        load_config("mnist-masked-u", ["modalities.y.kind=label", "modalities.y.encoder=backbone"])
    with pytest.raises(ConfigError, match="only model.variant='X'"):
        load_config("mnist-masked-u", ["train.cond_drop_prob=0.1"])
    load_config(
        "mnist-masked-x", ["modalities.y.kind=label", "modalities.y.encoder=backbone", "train.cond_drop_prob=0.1"]
    )


@pytest.mark.parametrize(
    "name", ["imagenet64-masked-x", "imagenet64-label-m", "imagenet64-label-e", "imagenet64-text-rep"]
)
def test_real_scale_presets_train_two_steps_tiny(name, tmp_path):
    """The GPU presets cannot rot: validate them and run two steps with a tiny model on a synthetic folder."""
    import numpy as np
    from PIL import Image

    from mtdiff.train import Trainer

    rng = np.random.default_rng(0)
    for c in ("n01", "n02"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (70, 80, 3), dtype=np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    tiny = [
        f"data.root={tmp_path / 'data'}",
        "model.channels=8",
        "model.num_head_channels=-1",
        "model.num_heads=2",
        "model.num_res_blocks=1",
        "train.steps=2",
        "train.batch_size=2",
        "train.ckpt_every=2",
        "train.sample_every=0",
    ]
    if name == "imagenet64-text-rep":
        pytest.importorskip("sentence_transformers")
        pytest.importorskip("efficientnet_lite_pytorch")
    cfg = load_config(name, tiny + (["modalities.label.num_classes=2"] if "label" in name else []))
    metrics = Trainer(cfg, tmp_path / "run", progress=False).run()
    assert metrics["step"] == 2 and metrics["loss"] == metrics["loss"]


@pytest.mark.parametrize("name", ["cityscapes256-latent-x", "night2day256-latent-x"])
def test_latent_translation_presets_train_two_steps_tiny(name, tmp_path):
    """The GPU translation presets validate and train two steps: a tiny model at their real 32x32 latent size,
    on a synthetic paired folder (64 px) through a tiny random VAE (64 -> 32)."""
    from conftest import paired_folder, tiny_vae

    from mtdiff.train import Trainer

    assert from_dict(Config, to_dict(load_config(name))) == load_config(name)
    root, vae = paired_folder(tmp_path / "data", n=4, size=64), tiny_vae(tmp_path / "vae")
    tiny = [
        f"data.root={root}",
        "data.image_size=64",
        f"data.autoencoder={vae}",
        "model.channels=8",
        "model.num_heads=2",
        "model.num_res_blocks=1",
        "train.steps=2",
        "train.batch_size=2",
        "train.ckpt_every=2",
        "train.sample_every=0",
    ]
    trainer = Trainer(load_config(name, tiny), tmp_path / "run", progress=False)
    assert trainer.model.z_shape == (4, 32, 32)
    metrics = trainer.run()
    assert metrics["step"] == 2 and metrics["loss"] == metrics["loss"]
