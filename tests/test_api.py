"""The Python API on a trained run (mtdiff.runs.Run): the README's "Python" section runs as written,
each task answers with the right shapes, the same seed gives the same result on every path, and a
caller's mistake is an MtdiffError that says what was expected."""

import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_run

import mtdiff

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    for name, preset in [("demo", "mnist-masked-x"), ("m", "mnist-label-m"), ("seg", "mnist-seg2img")]:
        tiny_run(root / "runs" / name, preset, "sample.steps=4")
    return root


def test_readme_python_section_runs(runs, monkeypatch):
    """The README's code, executed in a directory holding the runs it names; what it promises holds."""
    section = README.read_text().split("## Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert max(len(code.split("\n\n")[i].splitlines()) for i in range(1, 3)) <= 4  # each task in a few lines
    monkeypatch.chdir(runs)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["samples"].images.shape == (16, 1, 32, 32)
    r = ns["restored"]
    assert r.restored.shape == (4, 1, 32, 32) and r.keep.shape == (4, 1, 32, 32)
    assert bool(((1 - r.keep).flatten(1).sum(1) > 0).all())  # every input gets a mask
    assert ns["m"].shipped and torch.allclose(ns["probs"].sum(1), torch.ones(10), atol=1e-4)
    assert ns["pairs"].labels.tolist() == list(range(10))
    assert ns["threes"].labels.tolist() == [3] * 4
    assert ns["digits"].shape == (10, 1, 32, 32)


def test_same_seed_same_result_and_masks_follow_the_seed(runs):
    run = mtdiff.load_run(runs / "runs" / "demo")
    a, b = run.sample(3, seed=7), run.sample(3, seed=7)
    torch.manual_seed(123)  # the global RNG plays no part
    c = run.sample(3, seed=7)
    assert torch.equal(a.images, b.images) and torch.equal(a.images, c.images)
    assert not torch.equal(a.images, run.sample(3, seed=8).images)
    x = a.images
    r1, r2, r3 = run.restore(x, seed=1), run.restore(x, seed=1), run.restore(x, seed=2)
    assert torch.equal(r1.keep, r2.keep) and torch.equal(r1.restored, r2.restored)
    assert not torch.equal(r1.keep, r3.keep)
    assert torch.equal(r1.restored * r1.keep, x * r1.keep)


def test_pil_images_round_trip(runs):
    run = mtdiff.load_run(runs / "runs" / "m")
    s = run.sample(2, seed=0)
    pil = s.pil()
    assert pil[0].size == (32, 32) and pil[0].mode == "L"
    back = run.pixels(pil)
    assert (back - s.images.clamp(-1, 1)).abs().max() <= 1 / 127.5 + 1e-6  # 8-bit quantisation only
    assert torch.equal(run.classify(pil, seed=0), run.classify(back, seed=0))


@pytest.mark.parametrize(
    "call, expected",
    [
        (lambda r: r.sample(0), "n must be an integer >= 1"),
        (lambda r: r.sample(2, steps=5000), "steps must be in [1, 1000]"),
        (lambda r: r.sample(2, steps=0), "steps must be in [1, 1000]"),
        (lambda r: r.sample(2, eta=-1), "eta must be >= 0"),
        (lambda r: r.sample(2, sampler="euler"), "sampler must be one of"),
        (lambda r: r.sample(2, labels=10), "class indices in [0, 10)"),
        (lambda r: r.sample(2, labels=[1, 2, 3]), "one per sample (2)"),
        (lambda r: r.sample(2, guidance=2.0), "train.cond_drop_prob > 0"),
        (lambda r: r.sample(2, labels=1, head_guidance=-1), "head_guidance must be a number > 0"),
        (lambda r: r.sample(2, prompts="a seven"), "needs a run with a text modality"),
        (lambda r: r.classify(torch.zeros(2, 1, 32, 32), t=1000), "t must be a time index in [0, 999]"),
        (lambda r: r.classify(torch.zeros(2, 1, 32, 32), t=-5), "t must be a time index in [0, 999]"),
        (lambda r: r.classify(torch.zeros(2, 3, 32, 32)), "must be [N, 1, 32, 32]"),
        (lambda r: r.classify(torch.zeros(0, 1, 32, 32)), "(N >= 1)"),
        (lambda r: r.classify(torch.zeros(2, 1, 32, 32), method="knn"), "method must be 'head' or 'elbo'"),
        (lambda r: r.restore(torch.zeros(2, 1, 32, 32)), "restore needs a run with a masked_image modality"),
        (lambda r: r.represent(torch.zeros(2, 1, 32, 32)), "represent needs a run with a vector modality"),
    ],
)
def test_caller_errors_say_what_was_expected(runs, call, expected):
    run = mtdiff.load_run(runs / "runs" / "m")
    with pytest.raises(mtdiff.MtdiffError) as e:
        call(run)
    assert expected in str(e.value)


@pytest.mark.parametrize("device, expected", [("foo", "unknown device 'foo'"), ("cuda", "sees no CUDA GPU")])
def test_unusable_devices_are_named(runs, device, expected):
    with pytest.raises(mtdiff.MtdiffError, match=re.escape(expected)):
        mtdiff.load_run(runs / "runs" / "m", device=device)


def test_restore_with_given_keep_and_bad_keep(runs):
    run = mtdiff.load_run(runs / "runs" / "demo")
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    keep = torch.ones(2, 1, 32, 32)
    keep[:, :, 8:16, 8:16] = 0
    r = run.restore(x, keep, seed=0)
    assert torch.equal(r.keep, keep) and torch.equal(r.restored * keep, x * keep)
    with pytest.raises(mtdiff.MtdiffError, match=r"keep must be \[2, 1, 32, 32\]"):
        run.restore(x, keep[:1], seed=0)
    with pytest.raises(mtdiff.MtdiffError, match="patches must be an integer >= 1"):
        run.restore(x, patches=0)


def test_translation_guidance_one_is_the_conditional_model_and_needs_a_guidable_run(runs, tmp_path):
    """Classifier-free guidance of a translation, eps_u + s (eps_c - eps_u): scale 1 is the unguided conditional
    model (same seed, same images up to rounding); on a barely trained run eps_c - eps_u is small, so the images
    move in proportion to s - 1 (scale 3 four times as far as 1.5); a run trained without dropping its backbone
    inputs is refused with the key it needs."""
    run = mtdiff.load_run(runs / "runs" / "seg")
    masks = torch.zeros(3, 32, 32, dtype=torch.long)
    masks[:, 6:26, 10:22] = 5
    plain = run.translate(masks, seed=0, steps=4).images
    moved = {s: (run.translate(masks, guidance=s, seed=0, steps=4).images - plain).abs().mean() for s in (1, 1.5, 3)}
    assert moved[1] < 1e-6 < moved[1.5]
    assert 3 < moved[3] / moved[1.5] < 5
    unguided = mtdiff.load_run(tiny_run(tmp_path / "s0", "mnist-seg2img", "train.cond_drop_prob=0.0", steps=1))
    with pytest.raises(mtdiff.MtdiffError, match="guidance needs a run trained with train.cond_drop_prob > 0"):
        unguided.translate(masks, guidance=2)


def test_bf16_inference_runs_the_network_in_bf16_and_returns_fp32_near_the_fp32_result(runs):
    """``load_run(precision="bf16")``: every task's network runs under bf16 autocast (a convolution's output is
    bf16), every returned tensor is float32 and near the fp32 one of the same seed (much nearer than another
    seed); the known pixels of a restoration stay exact. An unknown precision is named."""
    seen = []

    def dtypes(run):
        conv = next(m for m in run.model.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
        return run

    fp32, bf16 = (
        {k: mtdiff.load_run(runs / "runs" / k, precision=p) for k in ("demo", "m", "seg")} for p in ("fp32", "bf16")
    )
    for run in bf16.values():
        dtypes(run)
    x = fp32["demo"].sample(4, seed=0).images
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[:, 8:24, 8:24] = 3
    calls = {
        "sample": (lambda r: r["m"].sample(4, labels=[1, 2, 3, 4], seed=0).images),
        "restore": (lambda r: r["demo"].restore(x, seed=1).restored),
        "classify": (lambda r: r["m"].classify(x, seed=0)),
        "translate": (lambda r: r["seg"].translate(masks, seed=0).images),
    }
    for task, call in calls.items():
        seen.clear()
        a, b = call(fp32), call(bf16)
        assert seen and set(seen) == {torch.bfloat16}, task
        assert b.dtype == torch.float32, task
        assert (a - b).abs().mean() < 0.05, task
    other = fp32["m"].sample(4, labels=[1, 2, 3, 4], seed=1).images
    assert (other - fp32["m"].sample(4, labels=[1, 2, 3, 4], seed=0).images).abs().mean() > 0.2
    r = bf16["demo"].restore(x, seed=1)
    assert torch.equal(r.restored * r.keep, x * r.keep)
    with pytest.raises(mtdiff.MtdiffError, match="precision must be one of auto, bf16, fp16, fp32, got 'half'"):
        mtdiff.load_run(runs / "runs" / "m", precision="half")
