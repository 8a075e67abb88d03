"""Build the process and the model from a Config (the one place that maps config to objects)."""
from __future__ import annotations

import torch

from .config import Config, ConfigError
from .modalities import MODALITY_KINDS
from .models import MTModel, UNet
from .models.autoencoder import LatentMap, PixelMap, SpaceMap, latent_shape, read_vae_config
from .process import MTProcess, Prediction, aggregation_schedule, beta_schedule

__all__ = ["build_process", "build_model", "build_prediction", "build_space_map", "context_dim", "diffusion_shape"]

_TOKEN_KINDS = ("label", "vector", "text")


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
    return tuple(n for n, mc in cfg.modalities.items() if cfg.model.variant == "X" or mc.kind == "text")


def context_dim(cfg: Config) -> int:
    """Cross-attention width, or 0 when no modality enters as tokens."""
    needs = any(mc.encoder == "backbone" or (mc.kind in _TOKEN_KINDS and name in conditioned(cfg))
                for name, mc in cfg.modalities.items())
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
    return Prediction(build_process(cfg), d.prediction, d.loss_weighting, d.snr_gamma, d.timestep_sampling)


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
        kw = dict(z_shape=z_shape, features=features, head=mc.head, encoder=mc.encoder, source=mc.source)
        if mc.kind in ("image", "masked_image"):
            kw.update(clip=not d.autoencoder)                    # latents are not bounded to [-1, 1]
        if mc.kind == "masked_image":
            kw.update(mask=mc.mask, max_patches=mc.max_patches, patch_frac=mc.patch_frac, full_mask_prob=mc.full_mask_prob)
        elif mc.kind == "label":
            kw.update(num_classes=mc.num_classes, hidden=mc.hidden, seed=mc.seed, context_dim=tokens(name, mc))
        elif mc.kind == "segmentation":
            kw.update(num_classes=mc.num_classes, seed=mc.seed)
        elif mc.kind == "vector":
            kw.update(dim=mc.dim, hidden=mc.hidden or 256, seed=mc.seed, context_dim=tokens(name, mc),
                      extractor=mc.extractor)
        elif mc.kind == "text":
            kw.update(dim=mc.dim, class_names=mc.class_names, templates=mc.templates, text_encoder=mc.text_encoder,
                      context_dim=ctx)
        try:
            modalities.append(MODALITY_KINDS[mc.kind](name, **kw))
        except ValueError as e:
            raise ConfigError(f"modalities.{name}: {e}") from None
    cond_channels = sum(mod.cond_channels for mod in modalities if mod.name in cond_names and not mod.uses_context)
    try:
        backbone = UNet(image_size=z_shape[-1], in_channels=z_shape[0], out_channels=z_shape[0],
                        model_channels=m.channels, channel_mult=mult, num_res_blocks=m.num_res_blocks,
                        attention_resolutions=tuple(m.attention_resolutions), num_heads=m.num_heads,
                        num_head_channels=m.num_head_channels, dropout=m.dropout,
                        use_scale_shift_norm=m.use_scale_shift_norm, resblock_updown=m.resblock_updown,
                        cond_channels=cond_channels, context_dim=ctx or None,
                        gradient_checkpointing=m.gradient_checkpointing)
    except ValueError as e:            # the U-Net's own checks name the model.* setting at fault
        raise ConfigError(f"model: {e}") from None
    return MTModel(backbone, modalities, conditioned=cond_names, prediction=build_prediction(cfg))
