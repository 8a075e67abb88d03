"""Output spaces (eps, v, x0) and loss weightings: round trips through the MT shift, min-SNR as a weight on
the eps error, the reduction to an independent DDPM loss at w = 0, samplers and guidance unchanged by the
output space, and the learning-rate schedules."""

import math

import numpy as np
import pytest
import torch
from conftest import tiny

from mtdiff.build import build_model, build_process
from mtdiff.loss import mt_loss
from mtdiff.process import PREDICTIONS, Bridge, MTProcess, Prediction, beta_schedule
from mtdiff.sampling import SAMPLERS, init_state
from mtdiff.sampling.guidance import ClassifierFreeGuidance

T = 1000


def _process(gamma=1.0):
    betas = beta_schedule("linear", T)
    return MTProcess(betas, {"m": Bridge(gamma).weights(1 - betas)})


@pytest.mark.parametrize("kind", PREDICTIONS)
def test_target_and_eps_invert_each_other_through_the_mt_shift(kind):
    """z_t from (z_0, E, eps) by Eq. 4; the target of z_t's output space turns back into (eps, z_0)."""
    proc = _process(1.5)
    pred = Prediction(proc, kind)
    g = torch.Generator().manual_seed(0)
    z0, e, noise = (torch.randn(64, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.randint(0, T, (64,), generator=g)
    t[:2] = torch.tensor([0, T - 1])  # both ends of the chain
    zt = proc.q_sample(z0, t, {"m": e}, noise)
    out = pred.target(z0, noise, t)
    torch.testing.assert_close(pred.eps(out, zt, t, {"m": e}), noise, rtol=0, atol=1e-9)
    eps, y0 = pred.eps_and_z0(out, zt - proc.shift(t, {"m": e}, zt), t)
    torch.testing.assert_close(y0, z0, rtol=0, atol=1e-7)  # x0 from eps divides by sqrt(ab_T) ~ 0.006
    wrong = pred.eps(out, zt, t, {"m": e + 1})  # the shift matters (except for eps itself)
    assert torch.equal(wrong, noise) if kind == "eps" else not torch.allclose(wrong, noise)


@pytest.mark.parametrize("kind", PREDICTIONS)
@pytest.mark.parametrize("weighting", ["uniform", "min-snr"])
def test_weight_times_error_in_each_space_is_the_weighted_eps_error(kind, weighting):
    """weight_t ||out - target||^2 equals c_t ||eps_hat - eps||^2 with c_t = min(SNR, gamma) / SNR (min-snr),
    or 1, (1 + SNR) / SNR and 1 / SNR for uniform eps, v and x0: each space's uniform loss is a known
    weighting of Eq. 6's eps error, and min-snr gives every space the same one."""
    proc, gamma = _process(), 5.0
    pred = Prediction(proc, kind, weighting, gamma)
    g = torch.Generator().manual_seed(1)
    z0, e, noise, delta = (torch.randn(256, 4, generator=g, dtype=torch.float64) for _ in range(4))
    t = torch.randint(0, T, (256,), generator=g)
    zt = proc.q_sample(z0, t, {"m": e}, noise)
    out = pred.target(z0, noise, t) + 0.1 * delta  # an imperfect network
    lhs = pred.weight(t).double() * ((out - pred.target(z0, noise, t)) ** 2).mean(1)
    ab = proc.alphas_cumprod[t]
    snr = ab / (1 - ab)
    c = {
        "uniform": {"eps": torch.ones_like(snr), "v": (1 + snr) / snr, "x0": 1 / snr}[kind],
        "min-snr": snr.clamp(max=gamma) / snr,
    }[weighting]
    rhs = c * ((pred.eps(out, zt, t, {"m": e}) - noise) ** 2).mean(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-5, atol=0)  # the weight is float32


@pytest.mark.parametrize(
    "kind,weighting",
    [("eps", "uniform"), ("eps", "min-snr"), ("v", "uniform"), ("v", "min-snr"), ("x0", "uniform"), ("x0", "min-snr")],
)
def test_zero_weights_reduce_every_objective_to_an_independent_ddpm_loss(kind, weighting):
    """All weights w = 0 and lambda = 0: MT-Diffusion's loss equals the DDPM loss of that output space,
    written here from the DDPM formulas in numpy (linear betas, SNR = ab / (1 - ab))."""
    extra = [f"diffusion.prediction={kind}", f"diffusion.loss_weighting={weighting}"]
    cfg = tiny("mnist-masked-u", "modalities.masked.aggregation=constant", "modalities.masked.weight=0.0", *extra)
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.01 * torch.randn_like(p))
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(4, 1, 32, 32, generator=g) * 2 - 1
    data = {"masked": model.modalities["masked"].derive({"image": x0}, g)}
    t, noise = torch.randint(0, T, (4,), generator=g), torch.randn(4, 1, 32, 32, generator=g)
    loss, _ = mt_loss(model, build_process(cfg), x0, data, t=t, noise=noise, lam=0.0)

    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, T))[t.numpy()][:, None, None, None]
    xt = np.sqrt(ab) * x0.double().numpy() + np.sqrt(1 - ab) * noise.double().numpy()
    out = model.backbone(torch.from_numpy(xt).float(), t)["eps"].detach().double().numpy()
    target = {
        "eps": noise.double().numpy(),
        "x0": x0.double().numpy(),
        "v": np.sqrt(ab) * noise.double().numpy() - np.sqrt(1 - ab) * x0.double().numpy(),
    }[kind]
    snr = (ab / (1 - ab)).reshape(-1)
    w = (
        np.ones_like(snr)
        if weighting == "uniform"
        else {"eps": np.minimum(snr, 5) / snr, "v": np.minimum(snr, 5) / (snr + 1), "x0": np.minimum(snr, 5)}[kind]
    )
    expected = (w * ((out - target) ** 2).reshape(4, -1).mean(1)).mean()
    assert math.isclose(float(loss.detach()), expected, rel_tol=1e-4)


class _OutputModel:
    """A Denoiser whose network outputs ``kind`` (a fixed function of z and t), converted by Prediction."""

    def __init__(self, fn, process, kind):
        self.fn, self.process, self.pred, self.conditioned = fn, process, Prediction(process, kind), ()

    def encode(self, data):
        return {k: v for k, v in data.items() if k in self.process.weights}

    def predict(self, z, t, data, enc=None):
        return self.pred.eps(self.fn(z, t), z, t, self.encode(data) if enc is None else enc), {}

    def init_data(self, names, batch, *, generator, device):
        return {n: torch.zeros(batch, 2, dtype=torch.float64) for n in names}


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("kind", ["v", "x0"])
def test_a_v_or_x0_network_samples_as_its_eps_equivalent(sampler, kind):
    """A network with output space ``kind`` and the eps network that predicts the same thing (its output
    converted by hand with the y-chain formulas) give the same samples with every sampler, E known."""
    proc = _process(1.0)
    fn = lambda z, t: 0.3 * torch.tanh(z) + t.double()[:, None] / T  # noqa: E731
    e = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ab_of = lambda t: proc.alphas_cumprod[t][:, None]  # noqa: E731

    def eps_fn(z, t):  # by hand: y = z - m_t, then invert
        ab = ab_of(t)
        y = z - proc.alpha_tilde["m"][t][:, None] * e
        out = fn(z, t)
        return (1 - ab).sqrt() * y + ab.sqrt() * out if kind == "v" else (y - ab.sqrt() * out) / (1 - ab).sqrt()

    samples = []
    for model in (_OutputModel(fn, proc, kind), _OutputModel(eps_fn, proc, "eps")):
        g = torch.Generator().manual_seed(5)
        init = init_state(model, proc, batch=3, z_shape=(2,), known={"m": e}, generator=g)
        init.z = init.z.double()
        samples.append(SAMPLERS[sampler](model, proc, init, 20, generator=g).z)
    torch.testing.assert_close(samples[0], samples[1], rtol=0, atol=1e-9)


def test_classifier_free_guidance_of_a_v_model_is_guidance_in_eps():
    """Both branches convert with the encodings that formed z_t (the unconditional branch's inputs are
    dropped, not its z_t), so guiding v and guiding eps agree: eps(v_u + s (v_c - v_u)) = eps_u + s (eps_c - eps_u)."""
    cfg = tiny("mnist-masked-x", "diffusion.prediction=v")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 32, 32, generator=g) * 2 - 1
    data = {"masked": model.modalities["masked"].derive({"image": x}, g)}
    z, t = torch.randn(2, 1, 32, 32, generator=g), torch.tensor([100, 700])
    enc = model.encode(data)
    null = model.null_data(["masked"], 2, device="cpu")
    with torch.no_grad():
        v_c, v_u = model(z, t, data)[0], model(z, t, null)[0]
    expected = model.prediction.eps(v_u + 3.0 * (v_c - v_u), z, t, enc)
    torch.testing.assert_close(
        ClassifierFreeGuidance(model, 3.0).predict(z, t, data)[0], expected, rtol=1e-4, atol=1e-5
    )
    unguided = model.prediction.eps(v_u + 3.0 * (v_c - v_u), z, t, model.encode(null))
    assert not torch.allclose(unguided, expected, atol=1e-3)  # converting with the null encodings would differ


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_learning_rate_schedules_warm_up_alike_and_decay_to_zero(schedule, tmp_path):
    from mtdiff.data import ImageSet
    from mtdiff.train import Trainer

    images = torch.zeros(16, 1, 32, 32, dtype=torch.uint8)
    cfg = tiny(
        "mnist-ddpm",
        f"train.lr_schedule={schedule}",
        "train.steps=100",
        "train.warmup_steps=10",
        "train.lr=1e-3",
        "train.batch_size=4",
    )
    tr = Trainer(cfg, tmp_path, data=ImageSet(images, None, [], "zeros"), progress=False)
    lrs = [tr.lr_at(s) for s in range(100)]
    assert lrs[:10] == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    if schedule == "constant":
        assert lrs[10:] == [1e-3] * 90
        return
    assert lrs[-1] == 0.0 and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    mid = 1e-3 * 0.5 if schedule == "cosine" else 1e-3 * (1 - 45 / 90)
    assert tr.lr_at(54) == pytest.approx(mid, rel=1e-9)  # halfway through the decay


def test_resuming_with_more_steps_warns_that_a_decaying_lr_changes(tmp_path):
    from mtdiff.data import ImageSet
    from mtdiff.train import Trainer

    data = ImageSet(torch.zeros(16, 1, 32, 32, dtype=torch.uint8), None, [], "zeros")
    common = ["train.batch_size=4", "train.warmup_steps=1", "train.sample_every=0", "train.log_every=1"]
    Trainer(tiny("mnist-ddpm", *common, "train.steps=2"), tmp_path, data=data, progress=False).run()
    with pytest.warns(UserWarning, match="was 2 when this run started"):
        Trainer(tiny("mnist-ddpm", *common, "train.steps=4"), tmp_path, data=data, resume=True, progress=False)


@pytest.mark.parametrize("batch", [1, 7, 32])
def test_stratified_timesteps_cover_every_stratum_once_and_each_row_is_uniform(batch):
    pred = Prediction(_process(), timestep_sampling="stratified")
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([pred.timesteps(batch, g) for _ in range(4000)])  # [4000, batch]
    assert draws.min() >= 0 and draws.max() <= T - 1
    # the batch covers the noise levels evenly: its sorted times sit one per stratum of width T / batch
    u = (draws.sort(1).values.double() + 0.5) / T
    assert ((u * batch).floor() == torch.arange(batch)).double().mean() > 0.99
    # each row, on its own, is uniform on {0..T-1}: a chi-square test over 10 bins for every row position
    for row in draws.T:
        counts = torch.bincount(row // (T // 10), minlength=10).double()
        chi2 = float(((counts - len(row) / 10) ** 2 / (len(row) / 10)).sum())
        assert chi2 < 30, chi2  # 9 degrees of freedom: p < 0.001 above 27.9
    # a stratified batch has a smaller spread of its mean time than an independent one
    plain = Prediction(pred.process)
    uniform = torch.stack([plain.timesteps(batch, g) for _ in range(4000)])
    if batch > 1:
        assert draws.double().mean(1).std() < 0.5 * uniform.double().mean(1).std()


def test_stratified_timesteps_reach_the_trainer(tmp_path):
    from mtdiff.data import ImageSet
    from mtdiff.train import Trainer

    cfg = tiny("mnist-ddpm", "diffusion.timestep_sampling=stratified", "train.batch_size=8")
    tr = Trainer(
        cfg, tmp_path, data=ImageSet(torch.zeros(16, 1, 32, 32, dtype=torch.uint8), None, [], "zeros"), progress=False
    )
    assert tr.model.prediction.timestep_sampling == "stratified"
    t = tr.model.prediction.timesteps(8, torch.Generator().manual_seed(1))
    assert sorted((t * 8 // T).tolist()) == list(range(8))


@pytest.mark.parametrize("mean,std", [(-1.2, 1.2), (0.5, 0.8)])
def test_log_normal_timesteps_draw_ln_sigma_from_the_normal(mean, std):
    """Monte-Carlo: ln sigma_t of the drawn indices, sigma_t = sqrt((1 - ab_t) / ab_t), has the normal's mean
    and std (up to the binning onto T levels and the 0.3% of mass beyond sigma_0 = 0.01)."""
    pred = Prediction(_process(), timestep_sampling="log-normal", lognormal_mean=mean, lognormal_std=std)
    probs = pred.level_probs()
    assert probs.shape == (T,) and probs.min() >= 0 and abs(float(probs.sum()) - 1) < 1e-12
    g = torch.Generator().manual_seed(0)
    t = torch.cat([pred.timesteps(1000, g) for _ in range(200)])
    ab = pred.process.alphas_cumprod[t]
    log_sigma = 0.5 * ((1 - ab) / ab).log()
    assert abs(float(log_sigma.mean()) - mean) < 0.03, float(log_sigma.mean())
    assert abs(float(log_sigma.std()) - std) < 0.03, float(log_sigma.std())
    again = pred.timesteps(1000, torch.Generator().manual_seed(0))
    assert torch.equal(again, t[:1000])  # the caller's generator decides every draw


def test_log_normal_settings_reach_the_trainer_and_a_bad_std_is_a_config_error(tmp_path):
    from mtdiff.config import ConfigError
    from mtdiff.data import ImageSet
    from mtdiff.train import Trainer

    keys = ["diffusion.timestep_sampling=log-normal", "diffusion.lognormal_mean=2.0", "diffusion.lognormal_std=0.1"]
    cfg = tiny("mnist-ddpm", *keys, "train.batch_size=8")
    tr = Trainer(
        cfg, tmp_path, data=ImageSet(torch.zeros(16, 1, 32, 32, dtype=torch.uint8), None, [], "zeros"), progress=False
    )
    ab = tr.process.alphas_cumprod[tr.model.prediction.timesteps(64, torch.Generator().manual_seed(1))]
    assert (((1 - ab) / ab).sqrt().log() - 2.0).abs().max() < 0.5  # sigma_t near e^2: no uniform draws
    with pytest.raises(ConfigError, match="diffusion.lognormal_std must be > 0"):
        tiny("mnist-ddpm", "diffusion.lognormal_std=0")
