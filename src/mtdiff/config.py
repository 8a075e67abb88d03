"""Typed configuration: dataclasses, YAML presets of them, ``--set a.b=value`` overrides.

Every error names the key, the value and what was expected, and happens before any work.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import MtdiffError

__all__ = [
    "Config",
    "DataConfig",
    "DiffusionConfig",
    "ModalityConfig",
    "ModelConfig",
    "TrainConfig",
    "SampleConfig",
    "ConfigError",
    "load_config",
    "from_dict",
    "to_dict",
    "presets",
    "apply_overrides",
    "registries",
]


class ConfigError(MtdiffError, ValueError):
    """A configuration problem, raised before any work starts."""


@dataclass
class DataConfig:
    source: Literal["mnist", "fashion-mnist", "folder", "paired"] = "mnist"
    root: str | None = None  # image folder root (sources "folder", "paired")
    image_size: int = 32
    channels: int = 1
    on_bad: Literal["error", "skip"] = "error"  # what to do with an unreadable image file
    direction: Literal["AtoB", "BtoA"] = "AtoB"  # paired: source = left half A, target = right half B (or reverse)
    cache: bool | str = True  # folder, paired: decode once, memory-map after (true: ~/.cache/mtdiff; or a directory)
    autoencoder: str | None = (
        None  # directory of a diffusers AutoencoderKL (save_pretrained): diffuse in its latent space
    )
    latent_scale: float | None = (
        None  # z_0 = latent_scale * posterior mean; null: the VAE's scaling_factor (else 0.18215)
    )
    latent_cache: bool = True  # with autoencoder: encode each training image once, keep z_0 in the data cache


@dataclass
class DiffusionConfig:
    timesteps: int = 1000
    beta_schedule: Literal["linear", "cosine"] = "linear"
    lam: float = 0.1  # lambda of Eq. 6
    # the choices of prediction, loss_weighting and timestep_sampling are the names of their registries
    # (mtdiff.process.prediction: PREDICTIONS, WEIGHTINGS, TIMESTEP_SAMPLINGS; see registries())
    prediction: str = "eps"  # what the network outputs on the y-chain (eps: the paper's)
    loss_weighting: str = "min-snr"  # min-snr: Hang et al. 2023; uniform: Eq. 6 as printed (the paper's)
    snr_gamma: float = 5.0  # min-snr: the truncation gamma of min(SNR_t, gamma)
    timestep_sampling: str = "uniform"  # per batch row; uniform: Algorithm 2 (the paper's); log-normal: EDM's
    lognormal_mean: float = -1.2  # log-normal: mean of ln sigma_t, sigma_t = sqrt((1 - ab_t) / ab_t)
    lognormal_std: float = 1.2  # log-normal: its std


@dataclass
class ModalityConfig:
    kind: str = "masked_image"  # image | masked_image | label | segmentation | vector | text (MODALITY_KINDS)
    source: str | None = None  # batch key the data comes from (default: image for masks, label for labels)
    head: str = "auto"  # output | middle | classifier | middle-up; auto picks by kind and model.variant
    head_detach: bool = False  # stop-gradient in training: the head's loss trains the head, not the shared backbone
    loss_weight: float = 1.0  # lambda_i: the head's term of Eq. 6 is diffusion.lam * loss_weight * KL_i
    encoder: str = "auto"  # identity | fixed | backbone; auto picks the kind's first
    aggregation: Literal["bridge", "constant", "paper"] = "bridge"
    gamma: float = 1.0  # bridge: alpha~_t = gamma sqrt(ab_t (1 - ab_t))
    weight: float = 0.0  # constant: w_t = weight
    num_classes: int = 10  # label, segmentation
    dim: int = 0  # vector
    hidden: int = 0  # head MLP width (0: one linear layer)
    mask: Literal["random", "half", "full", "none"] = "random"  # masked_image
    max_patches: int = 10
    patch_frac: float = 0.25
    full_mask_prob: float = 0.1  # masked_image: fraction of fully masked training inputs
    seed: int = 0  # seed of fixed random encoder maps
    extractor: str | None = None  # vector: frozen image network whose representation is the data
    text_encoder: str = "all-MiniLM-L6-v2"  # text: sentence encoder (a known name or a local directory)
    templates: tuple[str, ...] = ("a photo of a {}",)  # text: captions made from class names
    class_names: tuple[str, ...] = ()  # text: names of the classes (default: the data source's)


@dataclass
class ModelConfig:
    variant: Literal["U", "X", "M", "E"] = (
        "U"  # U: eps(z_t, t); X: eps(z_t, X, t); M / E: U with label head on middle / output
    )
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 4
    num_head_channels: int = -1
    dropout: float = 0.1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    context_dim: int = 0  # cross-attention width; 0: 4 * channels when a modality needs it
    gradient_checkpointing: bool = False
    # Tell the network which encodings form z_t: a learned embedding per aggregating modality, added to the time
    # embedding where the modality's shift is not its "nothing known" one (MTModel.encoded). Off: the paper's
    # network, which must infer it from z_t; on: for several modalities with train.enc_drop_prob (docs/TRAINING.md).
    encoded_flags: bool = False


@dataclass
class TrainConfig:
    steps: int = 10000
    batch_size: int = 64  # global batch: split evenly over the torchrun processes
    micro_batch: int = 0  # per-process chunk for gradient accumulation (0: the whole share at once)
    lr: float = 2e-4
    warmup_steps: int = 500
    lr_schedule: Literal["constant", "cosine", "linear"] = (
        "cosine"  # after warm-up; cosine/linear decay to 0 at train.steps; constant: the paper's
    )
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "bf16", "fp16", "fp32"] = (
        "auto"  # autocast dtype; auto: bf16 on a GPU or a CPU with native bf16, else fp32
    )
    compile: bool = False  # torch.compile the backbone (minutes of compiling first)
    channels_last: bool = False  # NHWC memory layout
    deterministic: bool = False  # deterministic kernels only (GPU: bit-identical resume, slower)
    log_every: int = 50
    ckpt_every: int = 1000
    sample_every: int = 1000
    keep_checkpoints: int = 2
    max_nonfinite: int = 20  # consecutive non-finite losses before the run stops
    cond_drop_prob: float = 0.0  # -X: drop each backbone input with this probability (classifier-free guidance)
    enc_drop_prob: float = 0.0  # build z_t without a modality's encoding with this probability (trains inverse mode)
    # per sample, drop every backbone input (every encoding) at once with this probability, on top of the drops of
    # each: with several modalities that all tell the class, the heads and the unconditional model need samples
    # where none of them is there (joint generation: no input; inverse mode: no input and no encoding)
    cond_drop_all_prob: float = 0.0
    enc_drop_all_prob: float = 0.0
    init_from: str = ""  # a run directory: start from the weights its latest checkpoint samples with (fine-tuning)


@dataclass
class SampleConfig:
    sampler: str = "ddim"  # a name in mtdiff.sampling.SAMPLERS
    steps: int = 50
    eta: float = 0.0
    start: Literal["marginal", "standard"] = "marginal"
    clip: bool = True
    num: int = 64

    def kwargs(self, **overrides) -> dict[str, Any]:
        """Keyword arguments of ``mtdiff.sampling.generate``; an override of None keeps the config's value."""
        kw = {"sampler": self.sampler, "steps": self.steps, "eta": self.eta, "start": self.start, "clip": self.clip}
        return {**kw, **{k: v for k, v in overrides.items() if v is not None}}


@dataclass
class Config:
    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    modalities: dict[str, ModalityConfig] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


# ---------------------------------------------------------------------------- typed loading


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for tp_i in inner[:-1]:  # the first type that takes the value
            try:
                return _coerce(tp_i, value, key)
            except ConfigError:
                pass
        return _coerce(inner[-1], value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not valid; choose one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {_type_name(args[0])}, got {value!r}")
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of name -> {_type_name(args[1])}, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 2e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")


def from_dict(cls: type, raw: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys and wrong types raise ConfigError."""
    where = prefix or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        dotted = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown key {dotted!r}; valid keys in {where}: {names}")
    return cls(**{k: _coerce(hints[k], v, f"{prefix}.{k}" if prefix else k) for k, v in raw.items()})


def to_dict(cfg: Any) -> dict:
    """A plain, YAML/JSON-ready dict (tuples become lists)."""

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return raw


# ---------------------------------------------------------------------------- presets


def presets() -> dict[str, Any]:
    """Preset name -> the YAML file shipped with the package."""
    root = resources.files("mtdiff") / "configs"
    return {p.name[:-5]: p for p in root.iterdir() if p.name.endswith(".yaml")}


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a preset by name (see ``presets()``) or a YAML file, apply overrides, validate."""
    path = Path(name_or_path)
    available = presets()
    if str(name_or_path) in available:
        text, origin = available[str(name_or_path)].read_text(), f"preset {name_or_path!r}"
    elif path.suffix in (".yaml", ".yml") and path.is_file():
        text, origin = path.read_text(), str(path)
    else:
        raise ConfigError(f"no preset or YAML file {str(name_or_path)!r}; presets: {sorted(available)}")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{origin}: not valid YAML ({e})") from None
    raw = apply_overrides(raw, list(overrides or []))
    try:
        cfg = from_dict(Config, raw)
    except ConfigError as e:
        raise ConfigError(f"{origin}: {e}") from None
    return validate(cfg)


# ---------------------------------------------------------------------------- cross-field rules


def _kinds(cfg: Config) -> dict[str, type]:
    """Modality name -> its kind's class, from the registry ``mtdiff.modalities.MODALITY_KINDS``."""
    # imported here, not at the top: reading a config (the CLI's parser) needs no torch; the modalities
    # never import this module, so the registry is the one place that knows the kinds
    from .modalities import MODALITY_KINDS

    for name, mc in cfg.modalities.items():
        if mc.kind not in MODALITY_KINDS:
            raise ConfigError(f"modalities.{name}.kind: {mc.kind!r} is not valid; choose one of {list(MODALITY_KINDS)}")
    return {name: MODALITY_KINDS[mc.kind] for name, mc in cfg.modalities.items()}


def registries() -> dict[str, Any]:
    """Config key -> the registry whose names are its choices (a new entry is a new valid value)."""
    # imported here for the reason of _kinds; samplers and the process never import this module
    from .process.prediction import PREDICTIONS, TIMESTEP_SAMPLINGS, WEIGHTINGS
    from .sampling.samplers import SAMPLERS

    return {
        "diffusion.prediction": PREDICTIONS,
        "diffusion.loss_weighting": WEIGHTINGS,
        "diffusion.timestep_sampling": TIMESTEP_SAMPLINGS,
        "sample.sampler": SAMPLERS,
    }


def _check_names(cfg: Config) -> None:
    for key, registry in registries().items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in registry:
            raise ConfigError(f"{key}: {value!r} is not valid; choose one of {list(registry)}")


def validate(cfg: Config) -> Config:
    """Resolve ``auto`` choices and check combinations; returns the same object, resolved. Each modality's
    own fields are its kind's to resolve and check (``Modality.configure``)."""
    m = cfg.model
    _check_names(cfg)
    kinds = _kinds(cfg)
    from .modalities import MODALITY_KINDS  # (see _kinds)

    headed = [k for k, kind in MODALITY_KINDS.items() if m.variant in kind.variant_heads]  # M, E: a label head
    if headed and not any(m.variant in kind.variant_heads for kind in kinds.values()):
        raise ConfigError(
            f"model.variant={m.variant!r} (MT-Diffusion-{m.variant}) needs a modality of kind "
            f"{' or '.join(map(repr, headed))}; "
            f"modalities are {dict((n, mc.kind) for n, mc in cfg.modalities.items()) or 'empty'}"
        )
    if m.variant == "X" and not cfg.modalities:
        raise ConfigError(
            "model.variant='X' feeds modality data to the backbone but no modalities are configured; "
            "use variant 'U' for single-task DDPM"
        )
    texts = [n for n, kind in kinds.items() if kind.is_pure_condition()]  # captions: inputs in every variant
    for name, mc in cfg.modalities.items():
        key = f"modalities.{name}"
        try:
            kinds[name].configure(mc, key=key, variant=m.variant)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if mc.encoder == "backbone" and m.variant != "X" and not texts:
            raise ConfigError(
                f"{key}.encoder='backbone' runs the U-Net on this modality's cross-attention token, but with "
                f"model.variant={m.variant!r} the backbone never sees that token in training, so its zero-initialised "
                f"cross-attention stays zero and E would be the same for every input. Use model.variant='X' "
                f"(optionally with train.cond_drop_prob for guidance) or encoder 'fixed'"
            )
    if not m.channel_mult:
        raise ConfigError("model.channel_mult must list at least one multiplier, e.g. [1, 2, 2]")
    positive = {
        "train.steps": cfg.train.steps,
        "train.batch_size": cfg.train.batch_size,
        "diffusion.timesteps": cfg.diffusion.timesteps,
        "data.image_size": cfg.data.image_size,
        "data.channels": cfg.data.channels,
        "model.channels": m.channels,
        "train.log_every": cfg.train.log_every,
        "train.ckpt_every": cfg.train.ckpt_every,
        "train.keep_checkpoints": cfg.train.keep_checkpoints,
        "sample.num": cfg.sample.num,
    }
    positive.update(
        {
            "train.lr": cfg.train.lr,
            "diffusion.snr_gamma": cfg.diffusion.snr_gamma,
            "diffusion.lognormal_std": cfg.diffusion.lognormal_std,
            "train.max_nonfinite": cfg.train.max_nonfinite,
            "model.num_heads": m.num_heads,
            "model.num_res_blocks": m.num_res_blocks,
        }
    )
    nonnegative = {
        "train.weight_decay": cfg.train.weight_decay,
        "train.grad_clip": cfg.train.grad_clip,
        "diffusion.lam": cfg.diffusion.lam,
        "sample.eta": cfg.sample.eta,
        "train.sample_every": cfg.train.sample_every,
        "train.micro_batch": cfg.train.micro_batch,
        "train.warmup_steps": cfg.train.warmup_steps,
    }
    for section in (cfg.data, cfg.diffusion, cfg.model, cfg.train, cfg.sample, *cfg.modalities.values()):
        for f in dataclasses.fields(section):
            v = getattr(section, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{_section_name(cfg, section)}.{f.name} must be a finite number, got {v}")
    for key, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{key} must be > 0, got {v}")
    for key, v in nonnegative.items():
        if v < 0:
            raise ConfigError(f"{key} must be >= 0, got {v}")
    if not 0 <= m.dropout < 1:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
    if not 1 <= cfg.sample.steps <= cfg.diffusion.timesteps:
        raise ConfigError(
            f"sample.steps must be in [1, diffusion.timesteps={cfg.diffusion.timesteps}], got {cfg.sample.steps}"
        )
    if cfg.data.channels not in (1, 3):
        raise ConfigError(f"data.channels must be 1 or 3, got {cfg.data.channels}")
    if cfg.data.source == "folder" and not cfg.data.root:
        raise ConfigError("data.source='folder' needs data.root (a folder of class subfolders)")
    if cfg.data.source == "paired" and not cfg.data.root:
        raise ConfigError("data.source='paired' needs data.root (a folder with train/ and test/ or val/ of A|B images)")
    if isinstance(cfg.data.cache, str) and not cfg.data.cache.strip():
        raise ConfigError("data.cache must be true, false or a directory, got an empty string")
    if cfg.data.autoencoder:
        _validate_latent(cfg, kinds)
    if not (cfg.train.device in ("auto", "cpu", "cuda") or cfg.train.device.startswith("cuda:")):
        raise ConfigError(f"train.device: {cfg.train.device!r} is not valid; choose 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not 0 <= cfg.train.cond_drop_prob <= 1:
        raise ConfigError(f"train.cond_drop_prob must be in [0, 1], got {cfg.train.cond_drop_prob}")
    for key in ("enc_drop_prob", "cond_drop_all_prob", "enc_drop_all_prob"):
        if not 0 <= getattr(cfg.train, key) <= 1:
            raise ConfigError(f"train.{key} must be in [0, 1], got {getattr(cfg.train, key)}")
    for key in ("cond_drop_prob", "cond_drop_all_prob"):
        if getattr(cfg.train, key) > 0 and m.variant != "X" and not texts:
            raise ConfigError(
                f"train.{key}={getattr(cfg.train, key)} drops backbone inputs, which only "
                f"model.variant='X' or a text modality provides (got variant {m.variant!r}, no text)"
            )
    if not 0 <= cfg.train.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {cfg.train.ema_decay}")
    return cfg


def _section_name(cfg: Config, section) -> str:
    """The config key of a section object (``train``, ``modalities.mask``)."""
    for f in dataclasses.fields(cfg):
        if getattr(cfg, f.name) is section:
            return f.name
    return next(f"modalities.{n}" for n, mc in cfg.modalities.items() if mc is section)


def _validate_latent(cfg: Config, kinds: dict[str, type]) -> None:
    """Rules for diffusing in a frozen autoencoder's latent space (data.autoencoder)."""
    for name, mc in cfg.modalities.items():
        if kinds[name].latent_refusal:
            raise ConfigError(
                f"modalities.{name} (kind {mc.kind!r}) cannot be used with data.autoencoder: "
                f"{kinds[name].latent_refusal}. Use kind 'image' (encoded by the VAE), 'label' or "
                f"'vector', or unset data.autoencoder"
            )
    if cfg.data.latent_scale is not None and cfg.data.latent_scale <= 0:
        raise ConfigError(
            f"data.latent_scale must be > 0 (or null for the VAE's scaling_factor), got {cfg.data.latent_scale}"
        )
    if cfg.sample.clip:
        raise ConfigError(
            "sample.clip=true clips z_0 estimates to the pixel range [-1, 1], but with data.autoencoder "
            "z_0 is a VAE latent, which is not bounded so; set sample.clip=false"
        )
