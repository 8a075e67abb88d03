"""Evaluation metrics: FCN-style segmentation scores (paper Table 4) and the label/image agreement of
generated (image, label) pairs under the external MNIST classifier (``mtdiff.pretrained.mnist``, "MNIST-CNN
(ccexam)"); sample quality (FID-family, ``quality``) and task metrics (PSNR, SSIM, ECE, ..., ``task``)."""

from .classifier import label_agreement
from .quality import frechet_distance, sample_quality
from .segmentation import SegmentationMeter, confusion_matrix, segmentation_scores

__all__ = [
    "SegmentationMeter",
    "confusion_matrix",
    "segmentation_scores",
    "label_agreement",
    "frechet_distance",
    "sample_quality",
]
