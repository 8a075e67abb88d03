"""What a first GPU run would hit, shown on the CPU: draws on the generator's device, no host
synchronisation in a steady training step, DDP with parameters that get no gradient, a channels_last
resume, presets a GPU count can split, and the RNG state of another device."""
import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import tiny
from mtdiff.data.sources import ImageSet
from mtdiff.train import Trainer

PRESETS = ["mnist-ddpm", "mnist-masked-x", "mnist-label-m", "mnist-label-e", "mnist-seg2img", "fashion-edges2img",
           "mnist-text2img", "mnist-text2img:modalities.representation.encoder=backbone"]   # the last: imagenet64-text-rep's shape
STEP = ["train.sample_every=0", "train.batch_size=8", "train.warmup_steps=1", "train.cond_drop_prob=0.2",
        "train.enc_drop_prob=0.2"]


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
        if isinstance(g, torch.Generator) and getattr(func, "__name__", "") in ("rand", "randn", "randint", "randperm", "normal"):
            device = kwargs.get("device")
            if device is None or torch.device(device) != g.device:
                self.bad.append(f"{func.__name__} device={device}: " + traceback.format_stack(limit=3)[0].strip())
        return func(*args, **kwargs)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_draw_happens_on_its_generators_device(preset, tmp_path, data):
    """On a GPU the trainer's generator lives on the GPU, and a draw from it on the CPU (no ``device``) fails:
    every draw in a training step names the generator's device."""
    trainer = _trainer(preset, tmp_path, data)
    with _GeneratorDevices() as mode:
        trainer.train_step()
    assert not mode.bad, mode.bad


class _HostSyncs(TorchDispatchMode):
    """Counts reads of a device value on the host (``.item()``, ``int()``, ``bool()`` of a tensor)."""
    CPU_ONLY = ("_check_classes",)          # validation that reads values on the CPU only (a device check elsewhere)

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
def test_a_steady_training_step_never_waits_for_the_device(preset, tmp_path, data):
    trainer = _trainer(preset, tmp_path, data)
    for _ in range(2):
        trainer.train_step()                  # warm: lazy tables, caption encodings
    with _HostSyncs() as mode:
        trainer.train_step()
    assert not mode.syncs, "\n".join(mode.syncs)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_trainable_parameter_gets_a_gradient(preset, tmp_path, data):
    """DDP (without find_unused_parameters) waits for a gradient of every parameter that requires one and
    fails at the second step otherwise; a parameter that never learns must say so by being frozen."""
    trainer = _trainer(preset, tmp_path, data)
    trainer.train_step()
    missing = [n for n, p in trainer.model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("newer", [True, False])
def test_ddp_is_built_with_the_buffer_switch_this_torch_has(newer):
    """torch 2.13 renamed DDP's broadcast_buffers to forward_sync_buffers; pyproject allows torch >= 2.3."""
    from mtdiff.distributed import wrap_ddp

    class Old:                                    # the signature of DDP before 2.13
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
    common = ["train.channels_last=true", "train.lr_schedule=constant", "train.ckpt_every=2", "model.dropout=0.0",
              *STEP[:3]]
    straight = Trainer(tiny("mnist-masked-x", *common, "train.steps=4"), tmp_path / "a", data=data, progress=False)
    straight.run()
    Trainer(tiny("mnist-masked-x", *common, "train.steps=2"), tmp_path / "b", data=data, progress=False).run()
    resumed = Trainer(tiny("mnist-masked-x", *common, "train.steps=4"), tmp_path / "b", data=data, resume=True,
                      progress=False)
    nhwc = [p for p in resumed.model.parameters() if p.dim() == 4 and p.shape[1] > 1]
    assert nhwc and all(p.is_contiguous(memory_format=torch.channels_last) for p in nhwc)
    for p in resumed.model.parameters():
        for k, v in resumed.opt.state[p].items():
            if torch.is_tensor(v) and v.shape == p.shape:
                assert v.stride() == p.stride(), (k, p.shape)
    resumed.run()
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
