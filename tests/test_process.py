"""The MT forward process: identities, an independent DDPM oracle, Monte-Carlo against closed forms."""

import numpy as np
import pytest
import torch

from mtdiff.process import (
    Bridge,
    Constant,
    MTProcess,
    PaperRatio,
    alpha_tilde_from_weights,
    beta_schedule,
    weights_from_alpha_tilde,
)
from mtdiff.process.prediction import eps_from_z0, z0_from_eps

T = 1000
SHAPE = (4, 1, 3, 3)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype)


class DDPM:
    """An independent float64 DDPM written from Ho et al. (2020), numpy only."""

    def __init__(self, betas):
        self.b = np.asarray(betas, dtype=np.float64)
        self.a = 1 - self.b
        self.ab = np.cumprod(self.a)
        self.ab_prev = np.concatenate([[1.0], self.ab[:-1]])

    def q_sample(self, x0, i, eps):
        return np.sqrt(self.ab[i]) * x0 + np.sqrt(1 - self.ab[i]) * eps

    def q_posterior(self, x0, xt, i):
        c0 = np.sqrt(self.ab_prev[i]) * self.b[i] / (1 - self.ab[i])
        ct = np.sqrt(self.a[i]) * (1 - self.ab_prev[i]) / (1 - self.ab[i])
        return c0 * x0 + ct * xt, self.b[i] * (1 - self.ab_prev[i]) / (1 - self.ab[i])

    def p_step(self, xt, i, eps_hat, noise):
        mean = (xt - self.b[i] / np.sqrt(1 - self.ab[i]) * eps_hat) / np.sqrt(self.a[i])
        var = self.b[i] * (1 - self.ab_prev[i]) / (1 - self.ab[i])
        return mean + np.sqrt(var) * noise


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_beta_schedules_are_valid(schedule):
    b = beta_schedule(schedule, T)
    assert b.dtype == torch.float64 and b.shape == (T,)
    assert bool((b > 0).all() and (b < 1).all())
    ab = torch.cumprod(1 - b, 0)
    assert float(ab[-1]) < 1e-3  # the chain reaches noise


def test_unknown_beta_schedule_names_valid_ones():
    with pytest.raises(ValueError, match="linear"):
        beta_schedule("quadratic", 10)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_zero_weights_equal_independent_ddpm(schedule):
    betas = beta_schedule(schedule, T)
    proc = MTProcess(betas, weights={"m": Constant(0.0).weights(1 - betas)})
    ddpm = DDPM(betas.numpy())
    z0, eps, e, noise = (_randn(*SHAPE, seed=s) for s in range(4))
    enc = {"m": e}
    for i in [0, 1, 17, 500, T - 1]:
        t = torch.full((SHAPE[0],), i)
        zt = proc.q_sample(z0, t, enc, eps)
        np.testing.assert_allclose(zt.numpy(), ddpm.q_sample(z0.numpy(), i, eps.numpy()), rtol=1e-13, atol=1e-14)
        mean, var = proc.q_posterior(z0, zt, t, enc)
        ref_mean, ref_var = ddpm.q_posterior(z0.numpy(), zt.numpy(), i)
        np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(var.flatten().numpy(), np.full(SHAPE[0], ref_var), rtol=1e-12, atol=1e-15)
        # one ancestral step with a model that predicts eps exactly
        step = proc.posterior_mean_from_eps(zt, t, eps, enc) + var.sqrt() * noise
        np.testing.assert_allclose(
            step.numpy(), ddpm.p_step(zt.numpy(), i, eps.numpy(), noise.numpy()), rtol=1e-12, atol=1e-13
        )


def _procs():
    betas = beta_schedule("linear", T)
    alphas = 1 - betas
    return {
        "bridge": MTProcess(betas, {"a": Bridge(1.0).weights(alphas), "b": Bridge(0.5).weights(alphas)}),
        "constant": MTProcess(betas, {"a": Constant(0.05).weights(alphas), "b": Constant(-0.02).weights(alphas)}),
        "paper": MTProcess(betas, {"a": PaperRatio().weights(alphas)}),
    }


@pytest.mark.parametrize("kind", ["bridge", "constant", "paper"])
def test_recursion_round_trip(kind):
    proc = _procs()[kind]
    for name, w in proc.weights.items():
        at = alpha_tilde_from_weights(proc.alphas, w)
        torch.testing.assert_close(at, proc.alpha_tilde[name], rtol=0, atol=0)
        torch.testing.assert_close(weights_from_alpha_tilde(proc.alphas, at), w, rtol=1e-9, atol=1e-9)


def test_bridge_profile_is_the_given_alpha_tilde_and_reaches_the_prior():
    proc = _procs()["bridge"]
    ab = proc.alphas_cumprod
    torch.testing.assert_close(proc.alpha_tilde["a"], (ab * (1 - ab)).sqrt(), rtol=1e-10, atol=1e-12)
    z0 = _randn(8, 1, 4, 4, seed=1)
    enc = {"a": 3 * _randn(8, 1, 4, 4, seed=2), "b": _randn(8, 1, 4, 4, seed=3)}
    assert float(proc.prior_kl(z0, enc).max()) < 1e-3  # alpha~_T = sqrt(ab_T (1 - ab_T)) ~ 6e-3


def test_paper_ratio_explodes_as_design_says():
    at = _procs()["paper"].alpha_tilde["a"]
    assert 100 < float(at[499]) < 130 and float(at[-1]) > 1000


def test_y_chain_is_ddpm():
    """Key identity: y_t = z_t - m_t obeys y_t = sqrt(a_t) y_{t-1} + sqrt(1 - a_t) eps exactly."""
    proc = _procs()["constant"]
    z_prev = _randn(*SHAPE, seed=4)
    enc = {"a": _randn(*SHAPE, seed=5), "b": _randn(*SHAPE, seed=6)}
    eps = _randn(*SHAPE, seed=7)
    for i in [1, 10, 400, T - 1]:
        t = torch.full((SHAPE[0],), i)
        zt = proc.q_step(z_prev, t, enc, eps)
        y_prev = z_prev - proc.shift(t - 1, enc, z_prev)
        yt = zt - proc.shift(t, enc, zt)
        a = proc.alphas[i]
        torch.testing.assert_close(yt, a.sqrt() * y_prev + (1 - a).sqrt() * eps, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["bridge", "constant", "paper"])
def test_two_posterior_forms_agree(kind):
    """Eq. 5's explicit mean equals its eps form when eps is the noise that made z_t."""
    proc = _procs()[kind]
    z0 = _randn(*SHAPE, seed=8)
    enc = {k: _randn(*SHAPE, seed=9 + j) for j, k in enumerate(proc.weights)}
    eps = _randn(*SHAPE, seed=20)
    for i in [0, 3, 250, 999]:
        t = torch.full((SHAPE[0],), i)
        zt = proc.q_sample(z0, t, enc, eps)
        mean, _ = proc.q_posterior(z0, zt, t, enc)
        scale = 1 + float(zt.abs().max())
        torch.testing.assert_close(proc.posterior_mean_from_eps(zt, t, eps, enc), mean, rtol=1e-9, atol=1e-9 * scale)
        # Eq. 4 inverted on the y-chain y_t = z_t - m_t = sqrt(ab_t) z_0 + sqrt(1 - ab_t) eps
        y, ab = zt - proc.shift(t, enc, zt), proc.alphas_cumprod[i]
        torch.testing.assert_close(z0_from_eps(eps, y, ab.sqrt(), (1 - ab).sqrt()), z0, rtol=1e-8, atol=1e-8 * scale)
        torch.testing.assert_close(eps_from_z0(z0, y, ab.sqrt(), (1 - ab).sqrt()), eps, rtol=1e-8, atol=1e-8 * scale)


def _assert_gaussian(samples, mean, std, n_se=4.0):
    """Sample mean and variance (over dim 0) match N(mean, std^2) within n_se standard errors."""
    n = samples.shape[0]
    se_mean = std / n**0.5
    assert bool(((samples.mean(0) - mean).abs() <= n_se * se_mean).all()), "mean off"
    var = std**2
    se_var = var * (2 / (n - 1)) ** 0.5
    assert bool(((samples.var(0) - var).abs() <= n_se * se_var).all()), "variance off"


def _population(proc, n, d, seed):
    """n copies of one z_0 and one E per modality (contiguous: stride-0 tensors are slow)."""
    z0 = _randn(1, d, seed=seed).expand(n, d).contiguous()
    enc = {k: _randn(1, d, seed=seed + 1 + j).expand(n, d).contiguous() for j, k in enumerate(proc.weights)}
    return z0, enc


@pytest.mark.parametrize("kind", ["bridge", "constant"])
def test_monte_carlo_chain_matches_marginal(kind):
    """Running Eq. 3 step by step gives Eq. 4's marginal (checked at several t)."""
    proc = _procs()[kind]
    n, d = 20000, 3
    z0, enc = _population(proc, n, d, seed=30)
    g = _gen(32)
    z = z0.clone()
    checkpoints = {0, 9, 99, 499, T - 1}
    for i in range(T):
        t = torch.full((1,), i)  # broadcasts over the n chains
        z = proc.q_step(z, t, enc, torch.randn(n, d, generator=g, dtype=torch.float64))
        if i in checkpoints:
            mean, std = proc.q_mean_std(z0[:1], t, {k: v[:1] for k, v in enc.items()})
            _assert_gaussian(z, mean[0], std.flatten()[0])


@pytest.mark.parametrize("kind", ["bridge", "constant", "paper"])
def test_posterior_then_forward_reproduces_marginal(kind):
    """z_t ~ q(z_t|z0,X), z_{t-1} ~ q(z_{t-1}|z_t,z0,X) gives q(z_{t-1}|z0,X); a forward step gives back q(z_t|z0,X)."""
    proc = _procs()[kind]
    n, d = 40000, 2
    z0, enc = _population(proc, n, d, seed=40)
    g = _gen(42)
    for i in [1, 50, 600]:
        t = torch.full((n,), i)
        zt = proc.q_sample(z0, t, enc, torch.randn(n, d, generator=g, dtype=torch.float64))
        mean, var = proc.q_posterior(z0, zt, t, enc)
        z_prev = mean + var.sqrt() * torch.randn(n, d, generator=g, dtype=torch.float64)
        m_prev, s_prev = proc.q_mean_std(z0[:1], t[:1] - 1, {k: v[:1] for k, v in enc.items()})
        _assert_gaussian(z_prev, m_prev[0], s_prev.flatten()[0])
        z_back = proc.q_step(z_prev, t, enc, torch.randn(n, d, generator=g, dtype=torch.float64))
        m_t, s_t = proc.q_mean_std(z0[:1], t[:1], {k: v[:1] for k, v in enc.items()})
        _assert_gaussian(z_back, m_t[0], s_t.flatten()[0])


def test_shift_is_zero_at_z0_and_missing_modality_errors():
    proc = _procs()["bridge"]
    x = _randn(2, 1, 2, 2, seed=50)
    assert proc.shift(torch.tensor([-1, -1]), {"a": x}, x).abs().max() == 0
    with pytest.raises(KeyError, match="'c'"):
        proc.q_sample(x, torch.tensor([3, 4]), {"c": x}, x)


def test_prior_kl_is_zero_for_standard_normal_and_large_for_paper_ratio():
    betas = beta_schedule("linear", T)
    z0 = _randn(4, 1, 2, 2, seed=60)
    e = _randn(4, 1, 2, 2, seed=61)
    ddpm = MTProcess(betas)
    assert float(ddpm.prior_kl(z0, {}).max()) < 1e-4
    assert float(_procs()["paper"].prior_kl(z0, {"a": e}).mean()) > 1e3


def test_at_caches_one_table_per_name_and_device_and_matches_float64():
    """Repeated calls reuse one cached copy per (table, device, dtype), also for noise_std's 1 - ab_t
    (a temporary before, cached under its id: a new entry per call), and return the float64 values."""
    w = {"x": torch.full((50,), 0.01, dtype=torch.float64)}
    p = MTProcess(beta_schedule("linear", 50), w)
    t = torch.tensor([0, 7, 49])
    like, enc = torch.zeros(3, 2, dtype=torch.float64), {"x": torch.ones(3, 2, dtype=torch.float64)}
    first = p.noise_std(t, like), p.q_mean_std(like, t, enc)[0]
    size = len(p._tables)
    for _ in range(5):
        again = p.noise_std(t, like), p.q_mean_std(like, t, enc)[0]
        assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert len(p._tables) == size <= 3
    ab = torch.cumprod(1 - beta_schedule("linear", 50), 0)
    assert torch.equal(first[0].flatten(), (1 - ab[t]).sqrt())
    assert torch.equal(first[1][:, 0], p.alpha_tilde["x"][t])
    p.noise_std(t, like.float())  # float32 gathers from the same float64 table
    assert len(p._tables) == size
    assert torch.equal(p._at(p.alphas.clone(), t, like).flatten(), p.alphas[t])  # a foreign tensor: not cached
    assert len(p._tables) == size
