"""The MT-Diffusion forward process (Eq. 3), its marginal (Eq. 4), posterior (Eq. 5) and prior term L0.

Schedules are precomputed in float64 on the CPU; gathered coefficients are cast to the
dtype and device of the tensor they multiply. ``t`` is always a LongTensor [B] of indices
in [0, T) (index i is the paper's t = i + 1). ``enc`` maps modality name -> E_i(x_i), a
tensor shaped like z; a name missing from ``enc`` contributes nothing.

The key identity: with m_t = sum_i alpha~_t^(i) E_i and y_t = z_t - m_t,
y_t = sqrt(alpha_t) y_{t-1} + sqrt(1 - alpha_t) eps, an ordinary DDPM chain with y_0 = z_0.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .schedules import alpha_tilde_from_weights

__all__ = ["MTProcess"]


class MTProcess:
    """Closed forms of the MT-Diffusion process for betas [T] and per-modality weights w [T]."""

    def __init__(self, betas: Tensor, weights: Mapping[str, Tensor] | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.ndim != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
        self.num_timesteps = T = betas.shape[0]
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        # beta~_t = (1 - alpha_t)(1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)   (Eq. 5)
        self.posterior_variance = betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        self.weights: dict[str, Tensor] = {}
        self.alpha_tilde: dict[str, Tensor] = {}
        self.alpha_tilde_prev: dict[str, Tensor] = {}
        for name, w in (weights or {}).items():
            w = torch.as_tensor(w, dtype=torch.float64).cpu()
            if w.shape != (T,):
                raise ValueError(f"weights[{name!r}] must have shape ({T},), got {tuple(w.shape)}")
            at = alpha_tilde_from_weights(self.alphas, w)  # Theorem 2
            self.weights[name] = w
            self.alpha_tilde[name] = at
            self.alpha_tilde_prev[name] = torch.cat([torch.zeros(1, dtype=torch.float64), at[:-1]])
        self.one_minus_alphas_cumprod = 1 - self.alphas_cumprod
        # the host tables _at caches on devices, by name; the cache holds at most one copy per (name, device, dtype)
        self._host: dict[tuple[str, ...], Tensor] = {
            (k,): getattr(self, k)
            for k in (
                "betas",
                "alphas",
                "alphas_cumprod",
                "alphas_cumprod_prev",
                "one_minus_alphas_cumprod",
                "posterior_variance",
            )
        }
        for kind in ("weights", "alpha_tilde", "alpha_tilde_prev"):
            self._host.update({(kind, m): v for m, v in getattr(self, kind).items()})
        self._tables: dict[tuple[tuple[str, ...], torch.device, torch.dtype], Tensor] = {}

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.weights)

    # -- helpers -------------------------------------------------------------------------
    def _at(self, arr: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """arr[t] as [B, 1, ..., 1] in like's dtype and device, gathered on that device (no host sync).

        A table of this process is copied to a device once and cached by (name, device, dtype); any other
        tensor is copied on every call.
        """
        dtype = torch.float32 if like.device.type == "mps" else arr.dtype  # mps has no float64
        name = next((k for k, v in self._host.items() if v is arr), None)  # identity, not id(): copies too
        if name is None:
            table = arr.to(like.device, dtype)
        else:
            key = (name, like.device, dtype)
            table = self._tables.get(key)
            if table is None:
                table = self._tables[key] = arr.to(like.device, dtype)
        out = table[t.to(like.device).long()].to(like.dtype)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def _sum(self, table: Mapping[str, Tensor], t: Tensor, enc: Mapping[str, Tensor], like: Tensor) -> Tensor:
        out = torch.zeros_like(like)
        for name, e in enc.items():
            if name not in table:
                raise KeyError(f"no aggregation weights for modality {name!r}; process has {list(table)}")
            out = out + self._at(table[name], t, like) * e
        return out

    def shift(self, t: Tensor, enc: Mapping[str, Tensor], like: Tensor) -> Tensor:
        """m_t = sum_i alpha~_t^(i) E_i: the part of z_t's mean that comes from the modalities (Eq. 4).

        Index t = -1 stands for z_0 itself, where m = 0.
        """
        t = torch.as_tensor(t).long()
        m = self._sum(self.alpha_tilde, t.clamp(min=0), enc, like)
        keep = (t >= 0).to(device=like.device, dtype=like.dtype)
        return m * keep.reshape(-1, *([1] * (like.ndim - 1)))

    def noise_std(self, t: Tensor, like: Tensor) -> Tensor:
        """sqrt(1 - ab_t) as [B, 1, ..., 1]: the standard deviation of z_t given z_0 and X."""
        return self._at(self.one_minus_alphas_cumprod, t, like).sqrt()

    # -- forward process -----------------------------------------------------------------
    def q_step(self, z_prev: Tensor, t: Tensor, enc: Mapping[str, Tensor], noise: Tensor) -> Tensor:
        """One forward step (Eq. 3): z_t = sqrt(alpha_t) (z_{t-1} + sum_i w_t^(i) E_i) + sqrt(1 - alpha_t) eps."""
        a = self._at(self.alphas, t, z_prev)
        return a.sqrt() * (z_prev + self._sum(self.weights, t, enc, z_prev)) + (1 - a).sqrt() * noise

    def q_sample(self, z0: Tensor, t: Tensor, enc: Mapping[str, Tensor], noise: Tensor) -> Tensor:
        """Sample the marginal (Eq. 4): z_t = sqrt(ab_t) z_0 + sum_i alpha~_t^(i) E_i + sqrt(1 - ab_t) eps."""
        ab = self._at(self.alphas_cumprod, t, z0)
        return ab.sqrt() * z0 + self._sum(self.alpha_tilde, t, enc, z0) + (1 - ab).sqrt() * noise

    def q_mean_std(self, z0: Tensor, t: Tensor, enc: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of q(z_t | z_0, X) (Eq. 4)."""
        ab = self._at(self.alphas_cumprod, t, z0)
        return ab.sqrt() * z0 + self._sum(self.alpha_tilde, t, enc, z0), (1 - ab).sqrt()

    # -- posterior -----------------------------------------------------------------------
    def q_posterior(self, z0: Tensor, zt: Tensor, t: Tensor, enc: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(z_{t-1} | z_t, z_0, X) (Eq. 5, first form; Eq. 9 in Appendix B).

        mean = [sqrt(a_t)(1 - ab_{t-1}) z_t + (1 - a_t) sqrt(ab_{t-1}) z_0
                + sum_i ((1 - a_t) alpha~_{t-1} - a_t (1 - ab_{t-1}) w_t) E_i] / (1 - ab_t)
        """
        a = self._at(self.alphas, t, zt)
        ab = self._at(self.alphas_cumprod, t, zt)
        ab_prev = self._at(self.alphas_cumprod_prev, t, zt)
        mean = a.sqrt() * (1 - ab_prev) * zt + (1 - a) * ab_prev.sqrt() * z0
        for name, e in enc.items():
            at_prev = self._at(self.alpha_tilde_prev[name], t, zt)
            w = self._at(self.weights[name], t, zt)
            mean = mean + ((1 - a) * at_prev - a * (1 - ab_prev) * w) * e
        return mean / (1 - ab), self._at(self.posterior_variance, t, zt)

    def posterior_mean_from_eps(self, zt: Tensor, t: Tensor, eps: Tensor, enc: Mapping[str, Tensor]) -> Tensor:
        """Eq. 5, second form: (z_t - (1 - a_t) / sqrt(1 - ab_t) eps) / sqrt(a_t) - sum_i w_t^(i) E_i."""
        a = self._at(self.alphas, t, zt)
        ab = self._at(self.alphas_cumprod, t, zt)
        return (zt - (1 - a) / (1 - ab).sqrt() * eps) / a.sqrt() - self._sum(self.weights, t, enc, zt)

    # -- prior ---------------------------------------------------------------------------
    def prior_mean_std(self, enc: Mapping[str, Tensor], like: Tensor) -> tuple[Tensor, Tensor]:
        """q(z_T | X) without z_0's contribution: N(sum_i alpha~_T E_i, (1 - ab_T) I)
        (docs/DESIGN.md, paper error 3)."""
        tT = torch.full((like.shape[0],), self.num_timesteps - 1, dtype=torch.long)
        return self._sum(self.alpha_tilde, tT, enc, like), self._at(self.one_minus_alphas_cumprod, tT, like).sqrt()

    def prior_kl(self, z0: Tensor, enc: Mapping[str, Tensor]) -> Tensor:
        """L0 = KL(q(z_T | z_0, X) || N(0, I)) per sample, in nats per dimension (Theorem 1).

        Trains nothing; near 0 means the schedules end at the standard normal prior.
        """
        tT = torch.full((z0.shape[0],), self.num_timesteps - 1, dtype=torch.long)
        mean, std = self.q_mean_std(z0, tT, enc)
        var = std**2
        kl = 0.5 * (var + mean**2 - 1 - torch.log(var))
        return kl.flatten(1).mean(1)

    def alpha_tilde_T(self) -> dict[str, float]:
        """alpha~_T per modality: how much of E survives to the prior."""
        return {k: float(v[-1]) for k, v in self.alpha_tilde.items()}

    def signal_summary(self) -> dict[str, float]:
        """Scalars that tell whether the schedule is sane, for logs and reports."""
        out = {"alpha_bar_T": float(self.alphas_cumprod[-1])}
        for k, v in self.alpha_tilde.items():
            out[f"alpha_tilde_max/{k}"] = float(v.abs().max())
            out[f"alpha_tilde_T/{k}"] = float(v[-1])
        return out

    def __repr__(self) -> str:
        return f"MTProcess(T={self.num_timesteps}, modalities={list(self.weights)})"
