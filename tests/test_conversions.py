"""One conversion per thing: pixels <-> PIL, eps <-> z_0 on the y-chain, a run directory's layout."""

import pytest
import torch
from PIL import Image

from mtdiff.checkpoint import checkpoint_steps, has_checkpoints, load_checkpoint, save_checkpoint
from mtdiff.process import PREDICTIONS, Bridge, MTProcess, Prediction, beta_schedule
from mtdiff.process.prediction import eps_from_z0, z0_from_eps
from mtdiff.rundir import checkpoints_dir
from mtdiff.viz import from_pil, load_image, to_pil


@pytest.mark.parametrize("channels", [1, 3])
def test_pixels_survive_pil_and_files_both_ways(tmp_path, channels):
    """Pixels on the 8-bit grid -> PIL -> pixels is the identity, and a PNG file reads back the same."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, channels, 8, 8), generator=g).float() / 127.5 - 1
    images = to_pil(x)
    assert images[0].mode == ("L" if channels == 1 else "RGB")
    torch.testing.assert_close(from_pil(images, channels), x, rtol=0, atol=1e-6)
    images[1].save(tmp_path / "one.png")
    torch.testing.assert_close(load_image(tmp_path / "one.png", size=8, channels=channels), x[1:2], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="image is 8x8, the model expects 16x16"):
        load_image(tmp_path / "one.png", size=16, channels=channels)
    rgb = from_pil([Image.new("RGB", (4, 4), (255, 0, 0))], 1)  # converted to the run's channels
    assert rgb.shape == (1, 1, 4, 4) and -1 < float(rgb[0, 0, 0, 0]) < 1


@pytest.mark.parametrize("kind", PREDICTIONS)
def test_the_samplers_conversions_are_the_output_spaces(kind):
    """The samplers' z_0 from eps and eps from z_0 (float scales) are the eps and x0 spaces' inversions, which
    every other output space agrees with: converting the exact output of any space gives the same (eps, z_0)."""
    betas = beta_schedule("linear", 100)
    proc = MTProcess(betas, {"m": Bridge(1.0).weights(1 - betas)})
    pred = Prediction(proc, kind)
    g = torch.Generator().manual_seed(1)
    z0, noise = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([0, 10, 50, 90, 99])
    ab = proc.alphas_cumprod[t][:, None]
    y = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
    eps, y0 = pred.eps_and_z0(pred.target(z0, noise, t), y, t)
    torch.testing.assert_close(eps, noise, rtol=0, atol=1e-9)
    torch.testing.assert_close(y0, z0, rtol=0, atol=1e-7)
    for i in range(5):  # the samplers' form: one time for the whole batch, as Python floats
        a, s = float(ab[i].sqrt()), float((1 - ab[i]).sqrt())
        torch.testing.assert_close(z0_from_eps(noise[i], y[i], a, s), z0[i], rtol=0, atol=1e-7)
        torch.testing.assert_close(eps_from_z0(z0[i], y[i], a, s), noise[i], rtol=0, atol=1e-9)


def test_prediction_of_a_model_is_its_own_or_eps():
    proc = MTProcess(beta_schedule("linear", 100), {})

    class Bare:  # a model built without an output space
        prediction = None

    class Built:
        prediction = Prediction(proc, "v", "min-snr")

    assert Prediction.of(Bare(), proc) == Prediction(proc)
    assert Prediction.of(object(), proc) == Prediction(proc)
    assert Prediction.of(Built(), proc) is Built.prediction


def test_save_and_load_checkpoint_take_the_run_directory(tmp_path):
    """What save_checkpoint writes into RUN is what load_checkpoint(RUN) reads, in RUN's checkpoints folder."""
    weights = {"w": torch.arange(4.0)}
    for step in (3, 7):
        d = save_checkpoint(tmp_path, step=step, model=weights, ema=weights, state={}, meta={"x": step}, keep=2)
        assert d.parent == checkpoints_dir(tmp_path)
    assert has_checkpoints(tmp_path) and checkpoint_steps(tmp_path) == [3, 7]
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["meta"]["step"] == 7 and ckpt["meta"]["x"] == 7 and torch.equal(ckpt["ema"]["w"], weights["w"])
    assert load_checkpoint(tmp_path, step=3)["meta"]["x"] == 3
