"""Exponential moving average of model weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """theta_ema <- d theta_ema + (1 - d) theta, with d = min(decay, (1 + n) / (10 + n)) so short runs average
    over their own length."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module, weight: torch.Tensor | float = 1.0) -> None:
        """One averaging step; ``weight`` (a device scalar, 0 for a skipped step) scales 1 - d without a host sync."""
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema = list(self.model.parameters())
        if isinstance(weight, torch.Tensor):  # lerp with a tensor weight would read it on the host: add w (p - ema)
            diff = torch._foreach_sub([p.detach() for p in model.parameters()], ema)
            torch._foreach_mul_(diff, weight * (1 - d))
            torch._foreach_add_(ema, diff)
        else:
            torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], float(weight) * (1 - d))
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        self.model.load_state_dict(state)
        self.updates = updates
