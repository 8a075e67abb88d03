"""Evaluation metrics: FCN-style segmentation scores (paper Table 4) and an external MNIST classifier
used to score generated (image, label) pairs ("MNIST-CNN (ccexam)", never trained by mtdiff); sample quality
(FID-family, ``quality``) and task metrics (PSNR, SSIM, ECE, ..., ``task``)."""
from .classifier import MissingWeightsError, MNISTClassifier, label_agreement, load_mnist_classifier
from .quality import frechet_distance, sample_quality
from .segmentation import SegmentationMeter, confusion_matrix, segmentation_scores

__all__ = ["SegmentationMeter", "confusion_matrix", "segmentation_scores", "MNISTClassifier",
           "load_mnist_classifier", "label_agreement", "MissingWeightsError", "frechet_distance", "sample_quality"]
