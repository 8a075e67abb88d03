import pytest
import torch

from mtdiff.config import load_config


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def tiny(preset: str = "mnist-masked-x", *extra: str):
    """A preset shrunk to a test-sized model (8 channels, two resolutions)."""
    return load_config(preset, ["model.channels=8", "model.channel_mult=[1,2]", "model.num_res_blocks=1",
                                "model.attention_resolutions=[16]", "model.num_heads=2", *extra])
