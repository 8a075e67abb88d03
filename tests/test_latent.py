"""Latent diffusion through a frozen autoencoder (Appendix E.1): the map is deterministic and frozen, a run
trains and resumes exactly in latent space without the VAE in its checkpoints, the commands decode to pixels,
and a bad data.autoencoder fails clearly."""

import json
import sys

import pytest
import torch
import yaml
from conftest import tiny
from PIL import Image
from safetensors.torch import load_file

from mtdiff.checkpoint import latest_checkpoint
from mtdiff.cli.main import main
from mtdiff.config import ConfigError
from mtdiff.models.autoencoder import (
    DEFAULT_LATENT_SCALE,
    AutoencoderError,
    LatentMap,
    PixelMap,
)
from mtdiff.runs import load_run
from mtdiff.train import Trainer

pytest.importorskip("diffusers", reason="the latent-space tests need diffusers (pip install diffusers)")


def _cfg(pairs, vae_dir, *extra):
    """The cityscapes preset, tiny: 32 px pairs -> 4 x 16 x 16 latents."""
    return tiny(
        "cityscapes256-latent-x",
        f"data.root={pairs}",
        "data.image_size=32",
        f"data.autoencoder={vae_dir}",
        "train.batch_size=2",
        "train.sample_every=0",
        "train.log_every=1",
        "sample.num=2",
        "sample.steps=2",
        "model.num_head_channels=-1",
        *extra,
    )


def test_encode_decode_shapes_determinism_and_scale(vae_dir):
    lm = LatentMap.load(vae_dir)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = lm.encode(x)
    assert z.shape == (3, 4, 16, 16) and lm.shape((3, 32, 32)) == (4, 16, 16)
    assert torch.equal(z, lm.encode(x))  # posterior mean: no sampling
    assert lm.decode(z).shape == x.shape and lm.decode(z).abs().max() <= 1
    assert lm.scale == DEFAULT_LATENT_SCALE and not z.requires_grad
    assert not any(p.requires_grad for p in lm.vae.parameters()) and not lm.vae.training
    torch.testing.assert_close(LatentMap.load(vae_dir, scale=1.0).encode(x) * DEFAULT_LATENT_SCALE, z)
    torch.testing.assert_close(LatentMap(lm.vae, scale=0.5, chunk=1).encode(x), z / DEFAULT_LATENT_SCALE * 0.5)


def test_pixel_map_is_the_identity():
    x = torch.randn(2, 1, 8, 8)
    assert PixelMap().encode(x) is x and PixelMap().decode(x) is x and PixelMap().shape((1, 8, 8)) == (1, 8, 8)


def test_bad_autoencoder_directories_are_clear(tmp_path, vae_dir, monkeypatch):
    with pytest.raises(AutoencoderError, match=r"nope.*is not a directory.*save_pretrained"):
        LatentMap.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AutoencoderError, match=r"empty.*config.json"):
        LatentMap.load(tmp_path / "empty")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(AutoencoderError, match=r"is not a VAE directory.*'UNet2DModel'"):
        LatentMap.load(tmp_path / "unet")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((vae_dir / "config.json").read_text())
    with pytest.raises(AutoencoderError, match=r"noweights.*cannot load the AutoencoderKL"):
        LatentMap.load(tmp_path / "noweights")
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(AutoencoderError, match=r"needs the diffusers package: pip install diffusers"):
        LatentMap.load(vae_dir)


def test_config_refuses_pixel_space_modalities_and_clipping(pairs, vae_dir):
    with pytest.raises(ConfigError, match=r"modalities.mask \(kind 'segmentation'\).*latent resolution"):
        _cfg(pairs, vae_dir, "modalities.mask.kind=segmentation", "modalities.mask.source=class_mask")
    with pytest.raises(ConfigError, match=r"kind 'masked_image'.*pixel space"):
        _cfg(pairs, vae_dir, "modalities.m.kind=masked_image")
    with pytest.raises(ConfigError, match="set sample.clip=false"):
        _cfg(pairs, vae_dir, "sample.clip=true")
    with pytest.raises(ConfigError, match="data.latent_scale must be > 0"):
        _cfg(pairs, vae_dir, "data.latent_scale=0")


def test_trains_in_latent_space_and_resumes_exactly(tmp_path, pairs, vae_dir):
    straight = Trainer(_cfg(pairs, vae_dir, "train.steps=4", "train.ckpt_every=2"), tmp_path / "a", progress=False)
    assert straight.model.z_shape == (4, 16, 16) and straight.model.backbone.out_channels == 4
    straight.run()
    Trainer(_cfg(pairs, vae_dir, "train.steps=2", "train.ckpt_every=2"), tmp_path / "b", progress=False).run()
    resumed = Trainer(
        _cfg(pairs, vae_dir, "train.steps=4", "train.ckpt_every=2"), tmp_path / "b", resume=True, progress=False
    )
    resumed.run()
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    # the VAE is not in the checkpoint: exactly the model's tensors, none of the autoencoder's
    ckpt = latest_checkpoint(tmp_path / "b")
    for part in ("model", "ema"):
        keys = set(load_file(str(ckpt / f"{part}.safetensors")))
        assert keys == set(resumed.model.state_dict()) and not any("down_blocks" in k for k in keys)
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["data"]["latent_scale"] == DEFAULT_LATENT_SCALE


def test_commands_decode_samples_to_pixels(tmp_path, pairs, vae_dir, capsys):
    trainer = Trainer(_cfg(pairs, vae_dir, "train.steps=1", "train.ckpt_every=1"), tmp_path / "r", progress=False)
    trainer.run()
    with Image.open(trainer.sample_grid(tmp_path / "grid.png")) as im:
        assert im.size == (2 * (2 * 34 + 2), 2 * (34 + 2))  # two 32 px (pixel, not latent) cells, scale 2
    run = load_run(tmp_path / "r")
    assert isinstance(run.latent, LatentMap) and run.model.z_shape == (4, 16, 16)
    out = tmp_path / "t.png"
    assert main(["translate", "--run", str(tmp_path / "r"), "--num", "2", "--steps", "2", "--out", str(out)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["modality"] == "source" and scores["generated_mse_to_ground_truth"] >= 0
    with Image.open(out) as im:
        assert im.size == (2 * (6 * 34 + 2), 2 * (34 + 2))  # (source, truth, generated) x 2 in pixels
    (tmp_path / "in").mkdir()
    for i in range(2):  # --input: source images in pixels, encoded by the run's VAE
        Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(tmp_path / "in" / f"{i}.png")
    args = ["translate", "--run", str(tmp_path / "r"), "--steps", "2", "--input", str(tmp_path / "in")]
    assert main([*args, "--out", str(tmp_path / "i.png")]) == 0 and json.loads(capsys.readouterr().out)["n"] == 2
    assert (
        main(["sample", "--run", str(tmp_path / "r"), "--num", "2", "--steps", "2", "--out", str(tmp_path / "s.png")])
        == 0
    )
    with Image.open(tmp_path / "s.png") as im:
        assert im.size == (2 * (2 * 34 + 2), 2 * (34 + 2))
