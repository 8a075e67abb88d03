"""Shared test helpers. The tests run on the CPU on every machine (a GPU is hidden from them and from the
processes they start; decoded image folders go to a temporary data cache); the GPU paths are exercised by
``mtdiff check`` (mtdiff.cli.check)."""

import atexit
import os
import shutil
import tempfile

os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything initialises CUDA
os.environ["MTDIFF_CACHE"] = tempfile.mkdtemp(prefix="mtdiff-test-cache-")  # decoded folders: not in the user's cache

import pytest
import torch

from mtdiff.config import load_config

atexit.register(shutil.rmtree, os.environ["MTDIFF_CACHE"], True)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def tiny(preset: str = "mnist-masked-x", *extra: str):
    """A preset shrunk to a test-sized model (8 channels, two resolutions), on the CPU in fp32 on every machine
    (``precision: auto`` is bf16 on CPUs with native bf16; tests that want it say so)."""
    return load_config(
        preset,
        [
            "model.channels=8",
            "model.channel_mult=[1,2]",
            "model.num_res_blocks=1",
            "model.attention_resolutions=[16]",
            "model.num_heads=2",
            "train.precision=fp32",
            "train.device=cpu",
            *extra,
        ],
    )


def toy_images(n: int = 32, labels: bool = True, seed: int = 0):
    """``n`` random 32x32 one-channel images (uint8) with random labels among ten classes, as an ImageSet."""
    from mtdiff.data.imageset import ImageSet

    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 1, 32, 32, generator=g) * 255).to(torch.uint8)
    return ImageSet(
        images, torch.randint(0, 10, (n,), generator=g) if labels else None, [str(i) for i in range(10)], "toy"
    )


def tiny_run(out, preset: str, *extra: str, steps: int = 2, data=None, labels: bool = True):
    """Train ``preset`` shrunk by :func:`tiny` for ``steps`` steps of batch 4 (on ``data``, else random images)
    into ``out`` and return ``out``: a real run directory for the commands and the API to load."""
    from mtdiff.train import Trainer

    settings = (f"train.steps={steps}", f"train.ckpt_every={steps}", "train.sample_every=0", "train.batch_size=4")
    cfg = tiny(preset, *settings, *extra)
    Trainer(cfg, out, data=toy_images(labels=labels) if data is None else data, progress=False).run()
    return out


def paired_folder(root, splits=("train", "test"), n: int = 4, size: int = 16, seed: int = 0):
    """A synthetic pix2pix folder root/<split>/<i>.png, each A|B side by side (A = 255 - B)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in splits:
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            b = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(np.concatenate([255 - b, b], axis=1)).save(root / split / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A tiny random VAE on disk (:func:`tiny_vae`), one per test module."""
    return tiny_vae(tmp_path_factory.mktemp("vae") / "vae")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """A paired folder of 8 pairs of 32 px images (:func:`paired_folder`), one per test module."""
    return paired_folder(tmp_path_factory.mktemp("data") / "pairs", n=8, size=32)


def tiny_vae(path, channels: int = 3):
    """A random diffusers AutoencoderKL (two blocks: 32 -> 16 px, 4 latent channels) saved to ``path``."""
    diffusers = pytest.importorskip("diffusers", reason="the latent-space tests need diffusers (pip install diffusers)")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=32,
    )
    vae.save_pretrained(path)
    return path
