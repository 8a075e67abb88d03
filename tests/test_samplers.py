"""Samplers: an independent DDPM oracle, Algorithm 1 as printed (corrected), and a Gaussian toy with a known answer."""

import numpy as np
import pytest
import torch

from mtdiff.process import Bridge, Constant, MTProcess, beta_schedule
from mtdiff.sampling import SAMPLERS, ancestral, generate, init_state, restore, timesteps

T = 1000


class ToyModel:
    """A Denoiser whose eps comes from a function and whose one modality 'm' is encoded by a fixed map."""

    def __init__(self, eps_fn, process, estimate=None):
        self.eps_fn, self.process, self.estimate = eps_fn, process, estimate
        self.conditioned = ()

    def encode(self, data):
        return {k: v for k, v in data.items() if k in self.process.weights}

    def predict(self, z, t, data, enc=None):
        est = {} if self.estimate is None else {"m": self.estimate(z, t)}
        return self.eps_fn(z, t, data), est

    def init_data(self, names, batch, *, generator, device):
        return {n: torch.zeros(batch, 2, dtype=torch.float64) for n in names}


def _eps_fn(z, t, data):
    return 0.3 * torch.tanh(z) + t.double()[:, None] / T


def test_timesteps_cover_the_chain():
    for steps in (1, 10, 50, 999, 1000):
        ts = timesteps(T, steps)
        assert ts[0] == T - 1 and ts[-1] == 0 or steps == 1
        assert all(a > b for a, b in zip(ts, ts[1:]))
    assert timesteps(T, None) == list(range(T - 1, -1, -1))
    with pytest.raises(ValueError, match="steps"):
        timesteps(T, 0)


def test_zero_weights_ancestral_equals_independent_ddpm():
    betas = beta_schedule("linear", T)
    proc = MTProcess(betas, {"m": Constant(0.0).weights(1 - betas)})
    model = ToyModel(_eps_fn, proc)
    e = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(7)
    init = init_state(model, proc, batch=3, z_shape=(2,), known={"m": e}, start="standard", generator=g)
    init.z = init.z.double()
    out = ancestral(model, proc, init, None, generator=g).z
    # independent DDPM (Ho et al. 2020, Algorithm 2) in numpy with the same random stream
    b = betas.numpy()
    a, ab = 1 - b, np.cumprod(1 - b)
    g2 = torch.Generator().manual_seed(7)
    x = torch.randn(3, 2, generator=g2).double().numpy()
    for i in range(T - 1, -1, -1):
        eps = _eps_fn(torch.from_numpy(x), torch.full((3,), i), {}).numpy()
        mean = (x - b[i] / np.sqrt(1 - ab[i]) * eps) / np.sqrt(a[i])
        if i > 0:
            var = b[i] * (1 - ab[i - 1]) / (1 - ab[i])
            x = mean + np.sqrt(var) * torch.randn(3, 2, generator=g2, dtype=torch.float64).numpy()
        else:
            x = mean
    np.testing.assert_allclose(out.numpy(), x, rtol=1e-9, atol=1e-9)


def test_y_chain_step_is_algorithm_1_with_corrected_noise():
    """With E known and fixed, every ancestral step equals Algorithm 1 line 11 with std sqrt(beta~)."""
    betas = beta_schedule("linear", T)
    proc = MTProcess(betas, {"m": Bridge(1.0).weights(1 - betas)})
    model = ToyModel(_eps_fn, proc)
    e = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    zs = []
    g = torch.Generator().manual_seed(3)
    init = init_state(model, proc, batch=3, z_shape=(2,), known={"m": e}, start="standard", generator=g)
    init.z = init.z.double()
    ancestral(model, proc, init, None, generator=g, callback=lambda k, t, st, z0: zs.append(st.z.clone()))
    g2 = torch.Generator().manual_seed(3)
    z = torch.randn(3, 2, generator=g2).double()
    a, ab, w = proc.alphas, proc.alphas_cumprod, proc.weights["m"]
    for k, i in enumerate(range(T - 1, -1, -1)):
        eps = _eps_fn(z, torch.full((3,), i), {})
        z = (z - (1 - a[i]) / (1 - ab[i]).sqrt() * eps) / a[i].sqrt() - w[i] * e  # Algorithm 1, line 11
        if i > 0:
            z = z + proc.posterior_variance[i].sqrt() * torch.randn(3, 2, generator=g2, dtype=torch.float64)
        torch.testing.assert_close(zs[k], z, rtol=1e-9, atol=1e-9)


def _gaussian_toy(weights):
    """Data z_0 ~ N(mu, s^2 I), E fixed: the exact eps predictor is known in closed form."""
    betas = beta_schedule("linear", T)
    proc = MTProcess(betas, {"m": weights(1 - betas)})
    mu, s = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5

    def eps_exact(z, t, data):
        ab = proc.alphas_cumprod[t][:, None]
        y = z - proc.shift(t, {"m": data["m"]}, z)
        return (1 - ab).sqrt() * (y - ab.sqrt() * mu) / (ab * s**2 + 1 - ab)

    return proc, ToyModel(eps_exact, proc), mu, s


def _toy_samples(weights, method, steps, n=20000):
    proc, model, mu, s = _gaussian_toy(weights)
    e = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 2
    g = torch.Generator().manual_seed(5)
    init = init_state(model, proc, batch=n, z_shape=(2,), known={"m": e}, generator=g)
    init.z = init.z.double()
    return SAMPLERS[method](model, proc, init, steps, generator=g).z, mu, s


@pytest.mark.parametrize("method", ["ancestral", "ddim"])
def test_samplers_recover_a_known_gaussian(method):
    """With the exact eps, 1000-step ancestral sampling and the DDIM ODE give N(mu, s^2) (4 standard errors)."""
    out, mu, s = _toy_samples(Bridge(1.0).weights, method, None)
    n = out.shape[0]
    assert float((out.mean(0) - mu).abs().max()) < 4 * s / n**0.5 + 0.01  # + the start's sqrt(ab_T) mu offset
    assert float((out.std(0) / s - 1).abs().max()) < 4 / (2 * n) ** 0.5


def test_ddim_error_shrinks_with_steps():
    errs = [
        float((_toy_samples(Bridge(1.0).weights, "ddim", k)[0].std(0) / 0.5 - 1).abs().max()) for k in (20, 50, 200)
    ]
    assert errs[0] > errs[1] > errs[2]


def test_dpm_solver_tracks_the_ode_with_few_steps():
    """Both deterministic samplers solve the same probability-flow ODE from the same z_T. Against
    the 1000-step solution, DPM-Solver++(2M) at 10 steps is 4x closer than DDIM at 10, and at 20
    steps closer than DDIM at 80; the error falls with steps."""

    def err(method, steps):
        return float((_toy_samples(Bridge(1.0).weights, method, steps, n=2000)[0] - ode).abs().max())

    ode = _toy_samples(Bridge(1.0).weights, "ddim", None, n=2000)[0]
    e10, e20, e40 = (err("dpm-solver", k) for k in (10, 20, 40))
    assert e10 > e20 > e40
    assert e10 < err("ddim", 10) / 4 and e20 < err("ddim", 80)


@pytest.mark.parametrize("method,steps", [("ancestral", 100), ("ddim", 50), ("dpm-solver", 20)])
def test_samples_do_not_depend_on_the_aggregation_schedule(method, steps):
    """The y-chain identity: with the exact model, z_0 is the same whatever the weights (to round-off)."""
    a, *_ = _toy_samples(Constant(0.0).weights, method, steps, n=64)
    b, *_ = _toy_samples(Bridge(1.0).weights, method, steps, n=64)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_unknown_modality_is_updated_and_shift_uses_newest_estimate():
    """If the head always estimates E = c, joint sampling from init c equals conditional sampling on c."""
    proc, model, mu, s = _gaussian_toy(Constant(0.01).weights)
    c = torch.full((5, 2), 0.7, dtype=torch.float64)
    known_run = ancestral(model, proc, _init(model, proc, {"m": c}), 20, generator=torch.Generator().manual_seed(9))
    model_joint = ToyModel(model.eps_fn, proc, estimate=lambda z, t: c)
    model_joint.init_data = lambda names, batch, **kw: {"m": c.clone()}
    init = _init(model_joint, proc, {}, unknown=("m",))
    joint_run = ancestral(model_joint, proc, init, 20, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(joint_run.z, known_run.z)
    torch.testing.assert_close(joint_run.data["m"], c)


def _init(model, proc, known, unknown=()):
    init = init_state(
        model, proc, batch=5, z_shape=(2,), known=known, unknown=unknown, generator=torch.Generator().manual_seed(8)
    )
    init.z = init.z.double()
    return init


def test_restore_keeps_known_pixels_exactly_and_reports_drift():
    betas = beta_schedule("linear", T)
    proc = MTProcess(betas, {"masked": Bridge(1.0).weights(1 - betas)})

    class Img(ToyModel):
        modalities = {"masked": None}  # the masked image only: nothing else to generate or hold

        def init_data(self, names, batch, *, generator, device):
            return {}

        def null_data(self, names, batch, *, device=None):
            return {}

    model = Img(lambda z, t, data: 0.1 * z, proc)
    model.process = proc
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1
    keep = (torch.rand(2, 1, 4, 4, generator=g) > 0.5).float()
    masked = x * keep
    res = restore(model, proc, masked, keep, steps=10, generator=g)
    expected = ((res.raw - masked).abs() * keep).flatten(1).sum(1) / keep.flatten(1).sum(1)
    torch.testing.assert_close(res.drift, expected)
    torch.testing.assert_close(res.restored, keep * masked + (1 - keep) * res.raw)  # the raw chain, known pixels pasted
    # projection keeps the raw chain itself near the known pixels; left alone, this crude model drifts off them
    for sampler in ("ddim", "ancestral"):
        projected = restore(model, proc, masked, keep, steps=10, generator=g, sampler=sampler)
        free = restore(model, proc, masked, keep, steps=10, generator=g, sampler=sampler, project=False)
        assert float(projected.drift.max()) < 0.2 * float(free.drift.min()), (sampler, projected.drift, free.drift)
    with pytest.raises(ValueError, match="does not match"):
        restore(model, proc, masked, keep[:, :, :2], steps=2, generator=g)


def test_generate_rejects_unknown_sampler():
    proc, model, *_ = _gaussian_toy(Bridge(1.0).weights)
    with pytest.raises(ValueError, match="ddim"):
        generate(model, proc, batch=2, z_shape=(2,), known={"m": torch.zeros(2, 2)}, sampler="euler")
