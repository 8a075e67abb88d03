"""The MT-Diffusion training loss (Eq. 6, Algorithm 2)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .models.mtmodel import MTModel
from .process import MTProcess, Prediction

__all__ = ["mt_loss"]


def mt_loss(
    model: MTModel,
    process: MTProcess,
    z0: Tensor,
    data: Mapping[str, Tensor],
    *,
    t: Tensor,
    noise: Tensor,
    lam: float = 0.1,
    inputs: Mapping[str, Tensor] | None = None,
    encoded: Mapping[str, Tensor] | None = None,
    net=None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = ||eps_theta(z_t, t) - eps||^2 + lambda * sum_i lambda_i KL(q_i(x_i) || p_theta(x_i | z_t))   (Eq. 6)

    (lambda_i: ``modalities.<i>.loss_weight``, 1 in the paper, which weighs every head alike)

    with z_t ~ q(z_t | z_0, X) by Eq. 4. The first term is the one of ``model.prediction`` (default:
    eps, uniform, as printed): the squared error of the network's output space (eps, v or z_0 on the
    y-chain) times its per-sample weight (``min-snr``). Returns the scalar loss and its per-term batch
    means for logging: ``eps_mse`` (the eps error, whatever the output space, so runs compare) and one
    entry per modality, unweighted. ``inputs`` is what the -X
    backbone sees (default ``data``; with some conditions dropped for classifier-free guidance);
    ``encoded`` is what the forward process aggregates (default ``data``; with some modalities
    replaced by their "nothing known" value, the heads must read x_i from the image itself).
    ``net`` runs the forward pass (default ``model``; its DistributedDataParallel wrapper in DDP).
    """
    enc = model.encode(data if encoded is None else encoded)  # {i: E_i(x_i)}  [B, C, H, W]
    zt = process.q_sample(z0, t, enc, noise)  # Eq. 4
    out, preds = (net or model)(zt, t, data if inputs is None else inputs, enc)  # eps_theta (or v, z_0), {i: D_i(c_t)}
    pred = Prediction.of(model, process)
    target = pred.target(z0.float(), noise.float(), t)
    mse = ((out.float() - target) ** 2).flatten(1).mean(1)  # [B]
    heads = {name: model.modalities[name].loss(p, data[name]) for name, p in preds.items()}
    weighted = [model.modalities[name].loss_weight * v for name, v in heads.items()]
    total = pred.weight(t) * mse + lam * sum(weighted, torch.zeros_like(mse))
    with torch.no_grad():
        eps_mse = ((pred.eps(out.float(), zt.float(), t, enc) - noise.float()) ** 2).mean()
    terms = {"eps_mse": eps_mse, **{k: v.mean().detach() for k, v in heads.items()}}
    return total.mean(), terms
