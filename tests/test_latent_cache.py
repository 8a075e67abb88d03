"""The VAE latents of the training images, encoded once (data.latent_cache): training with them is bit-identical
to encoding every step, a second run maps them without running the encoder, another VAE or scale encodes again,
a damaged entry is found and made again, prepare-data makes them up front, and the config key is checked."""

import json

import pytest
import torch
from conftest import tiny
from safetensors.torch import load_file, save_file

from mtdiff.checkpoint import latest_checkpoint
from mtdiff.cli.main import main
from mtdiff.config import ConfigError
from mtdiff.models.autoencoder import LatentMap
from mtdiff.train import Trainer
from mtdiff.train.latents import PREFIX

pytest.importorskip("diffusers", reason="the latent-space tests need diffusers (pip install diffusers)")


@pytest.fixture
def encoded(monkeypatch):
    """The number of images each call of LatentMap.encode took."""
    rows = []
    real = LatentMap.encode
    monkeypatch.setattr(LatentMap, "encode", lambda self, x: rows.append(len(x)) or real(self, x))
    return rows


def _cfg(pairs, vae_dir, cache, *extra):
    """The cityscapes preset, tiny: 32 px pairs (image and source) -> 4 x 16 x 16 latents, 3 steps of batch 4."""
    return tiny(
        "cityscapes256-latent-x",
        f"data.root={pairs}",
        "data.image_size=32",
        f"data.autoencoder={vae_dir}",
        f"data.cache={cache}",
        "train.batch_size=4",
        "train.micro_batch=2",
        "train.steps=3",
        "train.ckpt_every=3",
        "train.sample_every=0",
        "train.log_every=1",
        "model.num_head_channels=-1",
        *extra,
    )


def _train(cfg, out):
    trainer = Trainer(cfg, out, progress=False)
    trainer.run()
    losses = [e["loss"] for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in e]
    return trainer, losses


def _entries(cache):
    return sorted(p for p in cache.iterdir() if p.name.startswith("latents-"))


def test_training_on_cached_latents_is_bit_identical_and_never_encodes(tmp_path, pairs, vae_dir, encoded):
    plain, plain_losses = _train(_cfg(pairs, vae_dir, tmp_path / "c", "data.latent_cache=false"), tmp_path / "a")
    assert encoded and not any(k.startswith(PREFIX) for k in plain.data.extras)
    encoded.clear()
    cached, cached_losses = _train(_cfg(pairs, vae_dir, tmp_path / "c"), tmp_path / "b")
    assert sum(encoded) == 2 * 8  # every image and every source image once, then never again
    assert cached.data.extras[PREFIX + "image"].shape == (8, 4, 16, 16)
    assert cached.data.extras[PREFIX + "source"].dtype == torch.float32
    assert len(cached_losses) == 3 and cached_losses == plain_losses
    for part in ("model", "ema"):
        a, b = (load_file(str(latest_checkpoint(tmp_path / r) / f"{part}.safetensors")) for r in "ab")
        for k in a:
            assert torch.equal(a[k], b[k]), (part, k)


def test_a_second_run_maps_the_latents_and_another_vae_encodes_again(tmp_path, pairs, vae_dir, encoded):
    cache = tmp_path / "c"
    first = Trainer(_cfg(pairs, vae_dir, cache), tmp_path / "r1", progress=False)
    assert sum(encoded) == 16 and len(_entries(cache)) == 1
    encoded.clear()
    second = Trainer(_cfg(pairs, vae_dir, cache), tmp_path / "r2", progress=False)
    second.run()
    assert encoded == []  # the encoder ran neither for the cache nor in the steps
    for k in (PREFIX + "image", PREFIX + "source"):
        assert torch.equal(first.data.extras[k], second.data.extras[k])
    Trainer(_cfg(pairs, vae_dir, cache, "data.latent_scale=0.5"), tmp_path / "r3", progress=False)
    assert sum(encoded) == 16 and len(_entries(cache)) == 2  # another scale: encoded again, beside the first
    other = tmp_path / "vae2"  # the same VAE with one weight changed
    other.mkdir()
    (other / "config.json").write_text((vae_dir / "config.json").read_text())
    weights = load_file(str(vae_dir / "diffusion_pytorch_model.safetensors"))
    weights["encoder.conv_in.weight"] = weights["encoder.conv_in.weight"] + 1e-3
    save_file(weights, str(other / "diffusion_pytorch_model.safetensors"))
    encoded.clear()
    changed = Trainer(_cfg(pairs, other, cache), tmp_path / "r4", progress=False)
    assert sum(encoded) == 16 and len(_entries(cache)) == 3
    assert not torch.equal(changed.data.extras[PREFIX + "image"], first.data.extras[PREFIX + "image"])


@pytest.mark.parametrize("damage", ["truncated", "flipped", "no meta"])
def test_a_damaged_entry_is_found_and_encoded_again(tmp_path, pairs, vae_dir, encoded, damage):
    cache = tmp_path / "c"
    good = Trainer(_cfg(pairs, vae_dir, cache), tmp_path / "r1", progress=False).data.extras[PREFIX + "image"].clone()
    (entry,) = _entries(cache)
    npy = entry / "image.npy"
    raw = npy.read_bytes()
    if damage == "truncated":
        npy.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped":
        npy.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    else:
        (entry / "meta.json").write_text("{")
    encoded.clear()
    with pytest.warns(UserWarning, match=r"damaged cache entry .*latents-.*VAE latents.*making it again"):
        again = Trainer(_cfg(pairs, vae_dir, cache), tmp_path / "r2", progress=False)
    assert sum(encoded) == 16 and torch.equal(again.data.extras[PREFIX + "image"], good)
    encoded.clear()
    Trainer(_cfg(pairs, vae_dir, cache), tmp_path / "r3", progress=False)  # the entry made again is intact
    assert encoded == []


@pytest.mark.filterwarnings("ignore:cannot keep the decoded images")
def test_an_unwritable_cache_costs_speed_only(tmp_path, pairs, vae_dir, encoded):
    (tmp_path / "file").write_text("not a directory")
    with pytest.warns(UserWarning, match="cannot keep the VAE latents"):
        trainer = Trainer(_cfg(pairs, vae_dir, tmp_path / "file" / "c"), tmp_path / "r", progress=False)
    assert PREFIX + "image" in trainer.data.extras and sum(encoded) == 16


def test_prepare_data_encodes_the_latents_up_front(tmp_path, pairs, vae_dir, encoded, capsys):
    cache = tmp_path / "c"
    sets = [f"data.root={pairs}", "data.image_size=32", f"data.autoencoder={vae_dir}", f"data.cache={cache}"]
    sets += ["train.device=cpu"]
    assert main(["prepare-data", "--config", "cityscapes256-latent-x", *(a for s in sets for a in ("--set", s))]) == 0
    assert "VAE latents (image, source)" in capsys.readouterr().out and sum(encoded) == 16
    encoded.clear()
    Trainer(_cfg(pairs, vae_dir, cache), tmp_path / "r", progress=False)
    assert encoded == []


def test_the_config_key(pairs, vae_dir, tmp_path):
    assert _cfg(pairs, vae_dir, tmp_path).data.latent_cache is True
    with pytest.raises(ConfigError, match=r"data.latent_cache: expected true or false, got 'sometimes'"):
        _cfg(pairs, vae_dir, tmp_path, "data.latent_cache=sometimes")
