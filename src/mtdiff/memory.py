"""What a training or sampling run will hold in memory, predicted before it starts.

Training
--------

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

Sampling
--------
No autograd records are kept, so what matters is the peak of the tensors alive at once: the U-Net's
skip connections, the current stage's activations and the sampler's state (z_t, y_t, the z_0 and eps
estimates, DPM-Solver's previous z_0, the modality data and encodings). :class:`LiveTensors` measures
that peak exactly, op by op, for the real sampling call with 3 steps at batch 1 and 2; the difference
is the cost per sample, the rest is fixed. A convolution also holds working copies of its input and
output while it runs (oneDNN reorders them into its blocked layout; cuDNN takes a workspace), counted
at each convolution. Measured on the CPU against PyTorch's own allocation record, the prediction is
an upper bound within 10%. On the CPU the C library's heap can keep freed blocks resident: the
resident peak grew by 1.5-2.2x the prediction with glibc's default settings and by 0.9x with
``MALLOC_MMAP_THRESHOLD_=65536``, which hands every large block back at once.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["MemoryEstimate", "SamplingEstimate", "LiveTensors", "estimate_training_memory",
           "estimate_sampling_memory", "module_bytes"]


def _mib(b: int) -> str:
    return f"{b / 2**20:,.1f} MiB"


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
        return (f"memory estimate per process on {device}: {_mib(self.total(device))} = weights {_mib(self.weights)} + "
                f"gradients {_mib(self.gradients)} + AdamW {_mib(self.optimizer)} + EMA {_mib(self.ema)} + activations "
                f"{_mib(self.activations_per_sample)}/sample x {self.micro_batch} = {_mib(self.activations)}"
                + (f" + data {_mib(self.data)}" if self.data_device == device else f"; data {_mib(self.data)} on {self.data_device}")
                + " (the framework's own memory comes on top)")


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    return _nbytes(module.parameters()) + _nbytes(module.buffers())


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
    weights = module_bytes(trainer.model)
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
                          ema=module_bytes(trainer.ema.model),
                          activations_per_sample=per_sample, micro_batch=trainer.micro_batch,
                          data=trainer.stream.data.nbytes, data_device=trainer.stream.data.images.device.type)


# -- sampling ----------------------------------------------------------------------------------

_CONVOLUTIONS = {torch.ops.aten.convolution, torch.ops.aten.conv2d, torch.ops.aten._convolution}


class LiveTensors(TorchDispatchMode):
    """The peak bytes of the tensors created while this mode is active that are alive at once.

    Every op's new outputs are counted once per storage and uncounted when the storage is freed (a
    weak reference's callback); a convolution adds its activation input and output while it runs (see
    the module docstring). Tensors that existed before (weights) are not counted."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def _freed(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        del self._refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = lambda tree: [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]  # noqa: E731
        inputs = {t.untyped_storage().data_ptr() for t in tensors((args, kwargs))}
        for t in tensors(out):
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes and key not in inputs and key not in self._refs:    # a view or an in-place result is no new memory
                self.live += nbytes
                self._refs[key] = weakref.ref(storage, lambda _, key=key, nbytes=nbytes: self._freed(key, nbytes))
        working = 0
        if func.overloadpacket in _CONVOLUTIONS:   # the activation in and out, not the filter
            working = sum(t.untyped_storage().nbytes() for t in tensors((args[0], out)))
        self.peak = max(self.peak, self.live + working)
        return out


@dataclass(frozen=True)
class SamplingEstimate:
    weights: int              # bytes
    fixed: int
    per_sample: int
    batch: int

    def total(self) -> int:
        return self.weights + self.fixed + self.per_sample * self.batch

    def summary(self, device: str) -> str:
        text = (f"memory estimate for sampling {self.batch} at once on {device}: {_mib(self.total())} = weights "
                f"{_mib(self.weights)} + {_mib(self.per_sample)}/sample x {self.batch} + {_mib(self.fixed)}")
        if device == "cpu":
            text += " (the C library's heap may keep up to ~2.2x the per-sample part resident)"
        return text


def estimate_sampling_memory(sample: Callable[[int], object], *, weights: int, batch: int) -> SamplingEstimate:
    """The estimate for sampling ``batch`` at once: ``sample(b)`` runs the real sampling call (same
    model, guidance, sampler and device) for b samples and 3 steps; it runs at b = 1 and 2 under
    :class:`LiveTensors`. ``weights``: bytes of the model held meanwhile (:func:`module_bytes`)."""
    peaks = []
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        for b in (1, 2) if batch > 1 else (1,):
            with LiveTensors() as live:
                sample(b)
            peaks.append(live.peak)
    per_sample = max(peaks[-1] - peaks[0], 0) if len(peaks) == 2 else peaks[0]
    return SamplingEstimate(weights=weights, fixed=max(peaks[0] - per_sample, 0), per_sample=per_sample, batch=batch)
