"""Guidance as Denoiser wrappers, so every sampler gets it for free.

- ``ClassifierFreeGuidance`` (Ho & Salimans, 2022): the -X model run with and without its
  backbone inputs (replaced by their fixed "nothing known" values, ``Modality.null``, as in training
  with ``train.cond_drop_prob``; no random draw, so a guided sample depends on its seed only),
  eps = eps_u + scale (eps_c - eps_u).
- ``HeadGuidance``: classifier guidance (Dhariwal & Nichol, 2021) by the model's own label head,
  no separate noisy classifier: eps = eps - scale sqrt(1 - ab_t) grad_z log p_head(y | z_t).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..process import MTProcess

__all__ = ["ClassifierFreeGuidance", "HeadGuidance"]


class _Wrapper:
    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):  # modalities, conditioned, z_shape, encode, init_data, null_data ...
        return getattr(self.model, name)


class ClassifierFreeGuidance(_Wrapper):
    """eps_u + scale * (eps_c - eps_u); ``scale = 1`` is the conditional model itself."""

    def __init__(self, model, scale: float, names: Sequence[str] | None = None):
        super().__init__(model)
        self.scale = float(scale)
        self.names = tuple(names if names is not None else model.conditioned)
        if not self.names:
            raise ValueError("classifier-free guidance needs a model with backbone inputs (variant X)")

    @torch.no_grad()
    def predict(
        self, z: Tensor, t: Tensor, data: Mapping[str, Tensor], enc: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        enc = self.model.encode(data) if enc is None else enc  # z_t was formed with the conditions' encodings
        eps_c, est = self.model.predict(z, t, data, enc)
        null = self.model.null_data(self.names, z.shape[0], device=z.device)
        eps_u, _ = self.model.predict(z, t, {**data, **null}, enc)
        return eps_u + self.scale * (eps_c - eps_u), est


class HeadGuidance(_Wrapper):
    """Steer sampling towards labels ``y`` [B] with the gradient of the model's own label head (of a modality whose
    ``value`` is a class)."""

    needs_grad = True  # samplers leave inference mode for it

    def __init__(self, model, process: MTProcess, name: str, y: Tensor, scale: float):
        super().__init__(model)
        mod = model.modalities[name]
        if mod.value != "class":  # its head gives class logits [B, K]
            raise ValueError(f"head guidance needs a modality whose value is a class; {name!r} is a {mod.value}")
        self.process, self.name, self.y, self.scale = process, name, y, float(scale)

    def predict(
        self, z: Tensor, t: Tensor, data: Mapping[str, Tensor], enc: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.enable_grad():
            zg = z.detach().requires_grad_(True)
            out, preds = self.model(zg, t, data, enc)
            logp = torch.log_softmax(preds[self.name].float(), dim=1)
            selected = logp.gather(1, self.y.to(z.device)[:, None]).sum()
            grad = torch.autograd.grad(selected, zg)[0]
        std = self.process.noise_std(t, z)
        m = self.model.modalities
        est = {n: m[n].estimate(p.detach()) for n, p in preds.items()}
        eps = self.model.to_eps(out.detach(), z, t, data, enc)
        return (eps - self.scale * std * grad).to(z.dtype), est
