"""Build the process and the model from a Config (the one place that maps config to objects)."""

from __future__ import annotations

from typing import Any

import torch

from .config import Config, ConfigError
from .data import load_source
from .data.cache import cache_dir
from .data.imageset import ImageSet
from .modalities import MODALITY_KINDS
from .models import MTModel, UNet
from .models.autoencoder import LatentMap, PixelMap, SpaceMap, latent_shape, read_vae_config
from .process import MTProcess, Prediction, aggregation_schedule, beta_schedule

__all__ = [
    "build_process",
    "build_model",
    "build_prediction",
    "build_space_map",
    "context_dim",
    "diffusion_shape",
    "load_data",
    "resolve_class_names",
]


def build_process(cfg: Config) -> MTProcess:
    """beta schedule + one aggregation schedule per modality -> MTProcess (float64 tables on the CPU,
    whatever the default device: models may be built on ``meta`` or a GPU)."""
    with torch.device("cpu"):
        return _build_process(cfg)


def _build_process(cfg: Config) -> MTProcess:
    betas = beta_schedule(cfg.diffusion.beta_schedule, cfg.diffusion.timesteps)
    weights = {}
    for name, mc in cfg.modalities.items():
        if not MODALITY_KINDS[mc.kind].aggregates:
            continue
        params = {"bridge": {"gamma": mc.gamma}, "constant": {"value": mc.weight}, "paper": {}}[mc.aggregation]
        weights[name] = aggregation_schedule(mc.aggregation, **params).weights(1 - betas)
    return MTProcess(betas, weights)


def conditioned(cfg: Config) -> tuple[str, ...]:
    """Modalities fed to the backbone: all of them in the -X variant; pure conditions (text) always."""
    return tuple(
        n for n, mc in cfg.modalities.items() if cfg.model.variant == "X" or MODALITY_KINDS[mc.kind].is_pure_condition()
    )


def context_dim(cfg: Config) -> int:
    """Cross-attention width, or 0 when no modality enters as tokens."""
    needs = any(
        mc.encoder == "backbone" or (MODALITY_KINDS[mc.kind].token_input and name in conditioned(cfg))
        for name, mc in cfg.modalities.items()
    )
    return (cfg.model.context_dim or 4 * cfg.model.channels) if needs else 0


def diffusion_shape(cfg: Config) -> tuple[int, int, int]:
    """The diffusion space [C, H, W]: the images', or the autoencoder's latent shape (Appendix E.1)."""
    d = cfg.data
    if not d.autoencoder:
        return d.channels, d.image_size, d.image_size
    return latent_shape(read_vae_config(d.autoencoder), d.channels, d.image_size)


def build_space_map(cfg: Config, device="cpu") -> SpaceMap:
    """Pixels <-> diffusion space: the frozen autoencoder of ``data.autoencoder``, or the identity."""
    if not cfg.data.autoencoder:
        return PixelMap()
    return LatentMap.load(cfg.data.autoencoder, scale=cfg.data.latent_scale, device=device)


def build_prediction(cfg: Config) -> Prediction:
    """The network's output space and the loss weighting of ``cfg.diffusion`` on the run's schedule."""
    d = cfg.diffusion
    return Prediction(
        build_process(cfg),
        kind=d.prediction,
        weighting=d.loss_weighting,
        snr_gamma=d.snr_gamma,
        timestep_sampling=d.timestep_sampling,
        lognormal_mean=d.lognormal_mean,
        lognormal_std=d.lognormal_std,
    )


def build_model(cfg: Config) -> MTModel:
    """The U-Net backbone and one Modality object (encoder + head) per configured modality."""
    m, d = cfg.model, cfg.data
    ctx = context_dim(cfg)
    cond_names = conditioned(cfg)
    z_shape = diffusion_shape(cfg)
    mult = tuple(m.channel_mult)
    features = {"output": m.channels * mult[0], "middle": m.channels * mult[-1]}
    tokens = lambda name, mc: ctx if mc.encoder == "backbone" or name in cond_names else 0  # noqa: E731
    modalities = []
    for name, mc in cfg.modalities.items():
        try:  # each kind reads its own fields of mc
            kind = MODALITY_KINDS[mc.kind]
            modalities.append(
                kind.from_config(
                    name,
                    mc,
                    z_shape=z_shape,
                    features=features,
                    context_dim=tokens(name, mc),
                    latent=bool(d.autoencoder),
                )
            )
        except ValueError as e:
            raise ConfigError(f"modalities.{name}: {e}") from None
    cond_channels = sum(mod.cond_channels for mod in modalities if mod.name in cond_names and not mod.uses_context)
    try:
        backbone = UNet(
            image_size=z_shape[-1],
            in_channels=z_shape[0],
            out_channels=z_shape[0],
            model_channels=m.channels,
            channel_mult=mult,
            num_res_blocks=m.num_res_blocks,
            attention_resolutions=tuple(m.attention_resolutions),
            num_heads=m.num_heads,
            num_head_channels=m.num_head_channels,
            dropout=m.dropout,
            use_scale_shift_norm=m.use_scale_shift_norm,
            resblock_updown=m.resblock_updown,
            cond_channels=cond_channels,
            context_dim=ctx or None,
            gradient_checkpointing=m.gradient_checkpointing,
        )
    except ValueError as e:  # the U-Net's own checks name the model.* setting at fault
        raise ConfigError(f"model: {e}") from None
    return MTModel(
        backbone, modalities, conditioned=cond_names, prediction=build_prediction(cfg), encoded_flags=m.encoded_flags
    )


def load_data(cfg: Config, split: str = "train", *, prepared: bool = False, workers: int = 1) -> ImageSet:
    """The ``split`` of ``cfg.data``, checked against the config (channels, size, label classes). A folder
    source with a cache and ``prepared``: only mapped from the cache (a DataError if not decoded yet);
    ``workers``: threads that decode a folder."""
    d = cfg.data
    kw: dict[str, Any] = {}
    if d.source in ("folder", "paired"):
        kw = {"root": d.root, "image_size": d.image_size, "channels": d.channels, "on_bad": d.on_bad}
        kw["cache"] = cache_dir(d.cache)
        kw["prepared"] = prepared and kw["cache"] is not None
        if d.source == "folder":
            kw["workers"] = workers
        if d.source == "paired":
            kw["direction"] = d.direction
    elif d.root:
        kw = {"root": d.root}
    data = load_source(d.source, split, **kw)
    if data.channels != d.channels or data.image_size != d.image_size:
        raise ConfigError(
            f"data {data.name!r} has {data.channels} channels at {data.image_size}px but the config says "
            f"data.channels={d.channels}, data.image_size={d.image_size}"
        )
    for name, mc in cfg.modalities.items():  # each kind checks what it reads of the data
        try:
            MODALITY_KINDS[mc.kind].check_data(mc, data, key=f"modalities.{name}")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return data


def resolve_class_names(cfg: Config, data: ImageSet) -> None:
    """Fill what each modality's config leaves to the training data (``Modality.resolve_from_data``: a text
    modality's class names, the config's, else the data source's)."""
    for name, mc in cfg.modalities.items():
        try:
            MODALITY_KINDS[mc.kind].resolve_from_data(mc, data, key=f"modalities.{name}")
        except ValueError as e:
            raise ConfigError(str(e)) from None
