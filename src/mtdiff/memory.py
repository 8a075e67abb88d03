"""What a training run will hold in memory, predicted before it starts.

Weights, gradients, AdamW's two moments and the EMA copy are counted from the parameters. The
activations kept for the backward pass are measured, not guessed: one forward of the loss on a
single sample, on the run's device and under its autocast, with every tensor autograd saves counted
once (``torch.autograd.graph.saved_tensors_hooks``), then scaled to the micro-batch. The backward
pass also holds a working set: the gradients flowing through one U-Net stage and, with gradient
checkpointing, that stage's recomputed activations and their gradients; it is counted as 2 (4.5 with
checkpointing) times the largest stage's saved activations, a rule fitted on CPU runs of the demo
backbone (the peak resident memory grew by 0.81-1.01x the prediction at batch 128, with and without
checkpointing; tests/test_reliability.py allows 0.75-1.25x). On a GPU the caching allocator's
fragmentation comes on top. Data is the in-memory dataset. The framework's own memory (allocator caches, CUDA
context, Python) comes on top.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["MemoryEstimate", "estimate_training_memory"]


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int              # bytes
    gradients: int
    optimizer: int
    ema: int
    activations_per_sample: int
    micro_batch: int
    data: int
    data_device: str

    @property
    def activations(self) -> int:
        return self.activations_per_sample * self.micro_batch

    @property
    def model_state(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.ema

    def total(self, device: str) -> int:
        """Bytes on ``device`` ('cpu' or 'cuda'): the training state and activations, plus the data if it is there."""
        return self.model_state + self.activations + (self.data if self.data_device == device else 0)

    def summary(self, device: str) -> str:
        mb = lambda b: f"{b / 2**20:,.1f} MiB"  # noqa: E731
        return (f"memory estimate per process on {device}: {mb(self.total(device))} = weights {mb(self.weights)} + "
                f"gradients {mb(self.gradients)} + AdamW {mb(self.optimizer)} + EMA {mb(self.ema)} + activations "
                f"{mb(self.activations_per_sample)}/sample x {self.micro_batch} = {mb(self.activations)}"
                + (f" + data {mb(self.data)}" if self.data_device == device else f"; data {mb(self.data)} on {self.data_device}")
                + " (the framework's own memory comes on top)")


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def saved_activation_bytes(loss_fn, stages=()) -> tuple[int, int]:
    """Bytes of the distinct tensors autograd saves for backward while ``loss_fn()`` runs (parameters
    excluded), and the most saved inside any one of the modules ``stages``."""
    seen: dict[int, int] = {}
    alive: list[torch.Tensor] = []          # held until the end, so no address is freed and reused meanwhile
    largest, marks = [0], {}

    def pack(t: torch.Tensor):
        if not isinstance(t, torch.nn.Parameter):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
            alive.append(t)
        return t

    def before(module, args):
        marks[id(module)] = sum(seen.values())

    def after(module, args, out):
        largest[0] = max(largest[0], sum(seen.values()) - marks.pop(id(module), 0))

    hooks = [h for m in stages for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss_fn()
    finally:
        for h in hooks:
            h.remove()
    return sum(seen.values()), largest[0]


def estimate_training_memory(trainer) -> MemoryEstimate:
    """The estimate for a :class:`mtdiff.train.Trainer`, measured with one sample through its loss."""
    from .loss import mt_loss

    params = [p for p in trainer.model.parameters() if p.requires_grad]
    weights = _nbytes(trainer.model.parameters()) + _nbytes(trainer.model.buffers())
    model = trainer.model
    batch = trainer.data.batch(torch.arange(1), trainer.device)
    g = torch.Generator(trainer.device).manual_seed(0)
    data = model.derive(batch, g)
    z0, x = trainer.diffusion_data(batch, data)
    t = torch.zeros(1, dtype=torch.long, device=trainer.device)

    noise = torch.randn(z0.shape, generator=g, device=trainer.device)

    def loss():
        with trainer._autocast():
            mt_loss(model, trainer.process, z0, x, t=t, noise=noise, lam=trainer.cfg.diffusion.lam)

    backbone = model.backbone
    stages = [*backbone.input_blocks, backbone.middle_block, *backbone.output_blocks]
    was_training, checkpointing = model.training, backbone.gradient_checkpointing
    model.train()
    devices = [trainer.device] if trainer.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):   # dropout draws here must not shift the run's RNG
            saved, _ = saved_activation_bytes(loss)
            backbone.gradient_checkpointing = False      # each stage's own activations, recomputed or not
            _, stage = saved_activation_bytes(loss, stages)
    finally:
        model.train(was_training)
        backbone.gradient_checkpointing = checkpointing
    per_sample = saved + int((4.5 if checkpointing else 2) * stage)
    return MemoryEstimate(weights=weights, gradients=_nbytes(params), optimizer=2 * _nbytes(params),
                          ema=_nbytes(trainer.ema.model.parameters()) + _nbytes(trainer.ema.model.buffers()),
                          activations_per_sample=per_sample, micro_batch=trainer.micro_batch,
                          data=trainer.stream.data.nbytes, data_device=trainer.stream.data.images.device.type)
