"""What a first GPU run would hit, shown on the CPU: draws on the generator's device, no host
synchronisation in a steady training step, DDP with parameters that get no gradient, a channels_last
resume, presets a GPU count can split, and the RNG state of another device."""

import json
import time
import traceback
import weakref

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
    "mnist-text2img:modalities.representation.encoder=backbone",  # imagenet64-text-rep's shape
    "mnist-ddpm:diffusion.timestep_sampling=log-normal",
    "mnist-text2img:model.variant=U;modalities.representation.encoder=backbone",  # cross-attention fed by the caption
    "mnist-omni",  # every modality at once: two backbone inputs, a caption, three heads
]
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
    extra = (*filter(None, more.split(";")), *extra)
    if preset in ("mnist-text2img", "mnist-omni"):
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


class _BlockingCopies(TorchFunctionMode):
    """Counts copies of host memory to "the device" that wait for it (``.to(device)``, ``.cuda()`` or
    ``copy_`` without ``non_blocking=True``): on a GPU each is a host sync. On the CPU the device is the CPU
    too, so which tensor lives on the host is tracked: the given ones (data sets, the process's float64
    tables), what a factory makes without a device or with the string "cpu", and what any op makes from
    host tensors only. Everything else (weights, gradients, what a factory makes on ``device``) counts as
    being on the device."""

    FACTORIES = ("tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "linspace", "rand", "randn")
    FACTORIES += ("randint", "randperm", "normal", "from_numpy")
    MOVES = ("to", "cuda", "copy_", "pin_memory")

    def __init__(self, on_host):
        super().__init__()
        self.host: dict[int, weakref.ref] = {}  # id -> the tensor (ids of dead tensors are reused)
        for x in on_host:
            self._add(x)
        self.copies = []

    def _add(self, x: torch.Tensor) -> None:
        self.host[id(x)] = weakref.ref(x)

    def _on_host(self, x) -> bool:
        ref = self.host.get(id(x)) if isinstance(x, torch.Tensor) else None
        return ref is not None and ref() is x

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        moves = False
        if name in ("to", "cuda", "copy_") and isinstance(args[0], torch.Tensor):
            source, target = (args[1], args[0]) if name == "copy_" else (args[0], None)
            moves = name == "cuda" or kwargs.get("device") is not None
            moves |= any(isinstance(a, (torch.device, str)) for a in args[1:])
            moves |= any(isinstance(a, torch.Tensor) and not self._on_host(a) for a in (*args[1:], target))
            waits = not kwargs.get("non_blocking", False) and not any(a is True for a in args[2:])
            if moves and waits and self._on_host(source):
                stack = traceback.extract_stack()[:-1]
                self.copies.append(" <- ".join(f"{f.name}:{f.lineno}" for f in reversed(stack[-6:])))
        out = func(*args, **kwargs)
        inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        device = kwargs.get("device")
        if name in self.FACTORIES:
            host = device is None or device == "cpu"
        elif name == "pin_memory":
            host = True
        else:
            host = name not in ("to", "cuda") and bool(inputs) and all(self._on_host(a) for a in inputs)
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor) and host:
                self._add(o)
            elif isinstance(o, torch.Tensor) and moves:  # on the CPU a move returns its input
                self.host.pop(id(o), None)
        return out


def _host_tensors(trainer) -> list[torch.Tensor]:
    """What lives on the host before a step: the data set and the process's float64 tables."""
    prediction = trainer.model.prediction
    tables = [*trainer.process._host.values(), *(prediction.process._host.values() if prediction else ())]
    data = trainer.stream.data
    return [data.images, *([data.labels] if data.labels is not None else []), *data.extras.values(), *tables]


@pytest.mark.parametrize("preset", PRESETS)
def test_a_training_step_is_ready_for_a_gpu(preset, tmp_path, data):
    """Three things a GPU run needs from every modality kind, checked on one trainer:

    - every draw names its generator's device (on a GPU the generator lives there, and a draw without
      ``device`` would happen on the CPU and fail);
    - every parameter that requires a gradient gets one (DDP without find_unused_parameters waits for
      each and fails at the second step; a parameter that never learns must be frozen);
    - steady steps read no device value on the host (no ``.item()``, ``int()``, ``bool()`` of a tensor) and
      copy no host memory to the device in a way that waits (one of the steps starts a new epoch).
    """
    trainer = _trainer(preset, tmp_path, data)
    with _GeneratorDevices() as draws:
        trainer.train_step()
    assert not draws.bad, draws.bad
    missing = [n for n, p in trainer.model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    trainer.train_step()  # warm: lazy tables, caption encodings
    with _HostSyncs() as syncs, _BlockingCopies(_host_tensors(trainer)) as copies:
        for _ in range(3):  # 32 images at batch 8: the third step starts epoch 1
            trainer.train_step()
    assert trainer.stream.epoch == 1
    assert not syncs.syncs, "\n".join(syncs.syncs)
    assert not copies.copies, "\n".join(copies.copies)


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


@pytest.mark.parametrize("preset", sorted({p.partition(":")[0] for p in PRESETS}))
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


# -- mtdiff check: what is left after a hard failure ---------------------------------------------


def _check_with(monkeypatch, tmp_path, sections: dict, *argv: str) -> dict:
    """``mtdiff check`` in this process over the fake ``sections``; returns the JSON it left on disk."""
    import mtdiff.cli.check as check

    monkeypatch.setattr(check, "SECTIONS", list(sections.items()))
    check.main(["--device", "cpu", "--out", str(tmp_path), "--no-isolate", *argv])
    return json.loads((tmp_path / check.RESULT_FILE).read_text())


def test_a_sticky_device_error_in_one_section_leaves_every_other_section_in_the_json(tmp_path, monkeypatch):
    """After a device-side assert every later synchronize raises again (a sticky CUDA error): the section
    FAILs, the cleanup's error is reported with it, the next sections still run, and the JSON on disk holds
    each section as soon as it ends."""
    import mtdiff.cli.check as check

    sticky = {"on": False}

    def release(ctx):
        if sticky["on"]:
            raise RuntimeError("CUDA error: device-side assert triggered")

    def assert_on_device(ctx):
        sticky["on"] = True
        raise RuntimeError("CUDA error: device-side assert triggered")

    def reads_the_json(ctx):
        on_disk = json.loads((tmp_path / check.RESULT_FILE).read_text())
        return "read", {"on_disk": [s["name"] for s in on_disk["sections"]]}

    monkeypatch.setattr(check, "_release", release)
    saved = _check_with(
        monkeypatch, tmp_path, {"first": lambda ctx: ("fine", {}), "assert": assert_on_device, "last": reads_the_json}
    )
    by_name = {s["name"]: s for s in saved["sections"]}
    assert list(by_name) == ["first", "assert", "last"]
    assert by_name["first"]["status"] == "PASS" and by_name["assert"]["status"] == "FAIL"
    assert "then the device failed" in by_name["assert"]["reason"]
    assert by_name["last"]["details"]["on_disk"] == ["first", "assert"]  # written before "last" began
    assert saved["failed"] == ["assert", "last"]  # in one process the device stays broken; --isolate keeps it


def test_a_hanging_section_is_given_up_at_its_limit_and_the_budget_counts_from_the_start(tmp_path, monkeypatch):
    import mtdiff.cli.check as check

    monkeypatch.setitem(check.LIMITS, "hangs", 0.5)
    sections = {"hangs": lambda ctx: time.sleep(30), "after": lambda ctx: ("fine", {})}
    t0 = time.monotonic()
    saved = _check_with(monkeypatch, tmp_path, sections)
    assert time.monotonic() - t0 < 10
    assert [s["status"] for s in saved["sections"]] == ["FAIL", "PASS"]
    assert "timed out after" in saved["sections"][0]["reason"]
    saved = _check_with(monkeypatch, tmp_path, sections, "--budget", "0")
    assert [s["status"] for s in saved["sections"]] == ["SKIP", "SKIP"]
    assert all("budget is spent" in s["reason"] for s in saved["sections"])


def test_an_isolated_section_runs_in_its_own_process(tmp_path):
    """The default on CUDA: each section in a new process, its result read back into the JSON."""
    from mtdiff.cli.check import RESULT_FILE, main

    r = main(["--device", "cpu", "--smoke", "--out", str(tmp_path), "--isolate", "--only", "sdpa"])
    assert [s["status"] for s in r["sections"]] == ["PASS"] and r["isolated"]
    assert json.loads((tmp_path / RESULT_FILE).read_text())["sections"][0]["name"] == "sdpa"
