"""What a first GPU run would hit, shown on the CPU: draws on the generator's device, no host
synchronisation in a steady training step, DDP with parameters that get no gradient, a channels_last
resume, presets a GPU count can split, and the RNG state of another device."""

import traceback

import pytest
import torch
from conftest import tiny
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from mtdiff.data import ImageSet
from mtdiff.train import Trainer

PRESETS = [
    "mnist-ddpm",
    "mnist-masked-x",
    "mnist-label-m",
    "mnist-label-e",
    "mnist-seg2img",
    "fashion-edges2img",
    "mnist-text2img",
    "mnist-text2img:modalities.representation.encoder=backbone",
]  # the last: imagenet64-text-rep's shape
STEP = [
    "train.sample_every=0",
    "train.batch_size=8",
    "train.warmup_steps=1",
    "train.cond_drop_prob=0.2",
    "train.enc_drop_prob=0.2",
]


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(32, 1, 32, 32, generator=g) * 255).to(torch.uint8)
    return ImageSet(images, torch.randint(0, 10, (32,), generator=g), [str(i) for i in range(10)], "toy")


def _trainer(preset, tmp_path, data, *extra):
    preset, _, more = preset.partition(":")
    extra = (*filter(None, [more]), *extra)
    if preset == "mnist-text2img":
        pytest.importorskip("sentence_transformers")
    cond = [] if preset in ("mnist-ddpm",) or "label" in preset else ["model.variant=X"]
    drops = STEP if cond or preset == "mnist-masked-x" else STEP[:3]
    return Trainer(tiny(preset, *drops, *extra), tmp_path, data=data, progress=False)


class _GeneratorDevices(TorchFunctionMode):
    """Records every factory call that draws from a generator without naming the generator's own device."""

    def __init__(self):
        super().__init__()
        self.bad = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        g = kwargs.get("generator")
        if isinstance(g, torch.Generator) and getattr(func, "__name__", "") in (
            "rand",
            "randn",
            "randint",
            "randperm",
            "normal",
        ):
            device = kwargs.get("device")
            if device is None or torch.device(device) != g.device:
                self.bad.append(f"{func.__name__} device={device}: " + traceback.format_stack(limit=3)[0].strip())
        return func(*args, **kwargs)


class _HostSyncs(TorchDispatchMode):
    """Counts reads of a device value on the host (``.item()``, ``int()``, ``bool()`` of a tensor)."""

    CPU_ONLY = ("_check_classes",)  # validation that reads values on the CPU only (a device check elsewhere)

    def __init__(self):
        super().__init__()
        self.syncs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            stack = traceback.extract_stack()
            if not any(f.name in self.CPU_ONLY for f in stack):
                self.syncs.append(" <- ".join(f"{f.name}:{f.lineno}" for f in reversed(stack[-8:-1])))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("preset", PRESETS)
def test_a_training_step_is_ready_for_a_gpu(preset, tmp_path, data):
    """Three things a GPU run needs from every modality kind, checked on one trainer:

    - every draw names its generator's device (on a GPU the generator lives there, and a draw without
      ``device`` would happen on the CPU and fail);
    - every parameter that requires a gradient gets one (DDP without find_unused_parameters waits for
      each and fails at the second step; a parameter that never learns must be frozen);
    - a steady step reads no device value on the host (no ``.item()``, ``int()``, ``bool()`` of a tensor).
    """
    trainer = _trainer(preset, tmp_path, data)
    with _GeneratorDevices() as draws:
        trainer.train_step()
    assert not draws.bad, draws.bad
    missing = [n for n, p in trainer.model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    trainer.train_step()  # warm: lazy tables, caption encodings
    with _HostSyncs() as syncs:
        trainer.train_step()
    assert not syncs.syncs, "\n".join(syncs.syncs)


@pytest.mark.parametrize("newer", [True, False])
def test_ddp_is_built_with_the_buffer_switch_this_torch_has(newer):
    """torch 2.13 renamed DDP's broadcast_buffers to forward_sync_buffers; pyproject allows torch >= 2.4."""
    from mtdiff.distributed import wrap_ddp

    class Old:  # the signature of DDP before 2.13
        def __init__(self, module, device_ids=None, broadcast_buffers=True):
            self.kw = {"broadcast_buffers": broadcast_buffers}

    class New:
        def __init__(self, module, device_ids=None, broadcast_buffers=None, forward_sync_buffers=None):
            self.kw = {"forward_sync_buffers": forward_sync_buffers}

    net = wrap_ddp(torch.nn.Linear(1, 1), torch.device("cpu"), New if newer else Old)
    assert net.kw == ({"forward_sync_buffers": False} if newer else {"broadcast_buffers": False})


def test_a_channels_last_resume_keeps_the_moments_in_the_parameters_layout(tmp_path, data):
    """CUDA's fused AdamW requires each moment to have its parameter's strides; a checkpoint stores them
    contiguous. The resumed run also continues exactly."""
    common = [
        "train.channels_last=true",
        "train.lr_schedule=constant",
        "train.ckpt_every=2",
        "model.dropout=0.0",
        *STEP[:3],
    ]
    straight = Trainer(tiny("mnist-masked-x", *common, "train.steps=4"), tmp_path / "a", data=data, progress=False)
    straight.run()
    Trainer(tiny("mnist-masked-x", *common, "train.steps=2"), tmp_path / "b", data=data, progress=False).run()
    resumed = Trainer(
        tiny("mnist-masked-x", *common, "train.steps=4"), tmp_path / "b", data=data, resume=True, progress=False
    )
    nhwc = [p for p in resumed.model.parameters() if p.dim() == 4 and p.shape[1] > 1]
    assert nhwc and all(p.is_contiguous(memory_format=torch.channels_last) for p in nhwc)
    for p in resumed.model.parameters():
        for k, v in resumed.opt.state[p].items():
            if torch.is_tensor(v) and v.shape == p.shape:
                assert v.stride() == p.stride(), (k, p.shape)
    resumed.run()
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize(
    "name",
    [
        "imagenet64-masked-x",
        "imagenet64-label-m",
        "imagenet64-label-e",
        "imagenet64-text-rep",
        "cityscapes256-latent-x",
        "night2day256-latent-x",
    ],
)
def test_gpu_presets_split_evenly_over_8_gpus(name):
    from mtdiff.config import load_config

    assert load_config(name).train.batch_size % 8 == 0


# modules whose CUDA backward has no deterministic kernel (torch.use_deterministic_algorithms raises on them)
NONDETERMINISTIC_ON_CUDA = (
    torch.nn.AdaptiveAvgPool2d,
    torch.nn.AdaptiveMaxPool2d,
    torch.nn.AdaptiveAvgPool3d,
    torch.nn.ReflectionPad2d,
    torch.nn.ReplicationPad2d,
    torch.nn.EmbeddingBag,
)


@pytest.mark.parametrize("preset", [p.partition(":")[0] for p in PRESETS[:-1]])
def test_no_model_holds_a_module_without_a_deterministic_cuda_backward(preset):
    from mtdiff.build import build_model

    bad = [n for n, m in build_model(tiny(preset)).named_modules() if isinstance(m, NONDETERMINISTIC_ON_CUDA)]
    assert not bad, bad


def test_the_deterministic_switch_turns_on_deterministic_kernels(tmp_path, data):
    try:
        trainer = _trainer("mnist-label-e", tmp_path, data, "train.deterministic=true")
        assert torch.are_deterministic_algorithms_enabled()
        trainer.train_step()
    finally:
        torch.use_deterministic_algorithms(False)


def test_a_checkpoint_from_another_device_type_resumes_with_a_warning(tmp_path, data, monkeypatch):
    """A CUDA generator's state (16 bytes) cannot be set on a CPU generator (and back): the run goes on
    from a generator reseeded by seed and step, and says so."""
    import mtdiff.train.trainer as trainer_module

    common = ["train.ckpt_every=2", "train.steps=2", "train.lr_schedule=constant", *STEP[:3]]
    Trainer(tiny("mnist-ddpm", *common), tmp_path, data=data, progress=False).run()
    load = trainer_module.load_checkpoint

    def from_a_gpu(run_dir, *a, **kw):
        ckpt = load(run_dir, *a, **kw)
        ckpt["state"]["rng.gen"] = torch.zeros(16, dtype=torch.uint8)  # the form of a CUDA generator state
        ckpt["state"]["rng.cuda"] = torch.zeros(16, dtype=torch.uint8)
        return ckpt

    monkeypatch.setattr(trainer_module, "load_checkpoint", from_a_gpu)
    with pytest.warns(UserWarning, match="written on a GPU"):
        resumed = Trainer(
            tiny("mnist-ddpm", *common, "train.steps=3"), tmp_path, data=data, resume=True, progress=False
        )
    assert resumed.step == 2
    resumed.run()
    assert resumed.step == 3
