"""The paper's numbers (Chen et al., ICLR 2024) for the comparisons ``paper_claims.py`` reruns, and the names of its
tables and of their rows."""

from __future__ import annotations

# Table 2, ImageNet (1M iterations, 5k samples): IS, FID, sFID, precision, recall, as printed.
PAPER_TABLE2 = {
    "ddpm": ("ADM (un-cond)", (15.64, 23.22, 16.53, 0.57, 0.60)),
    "masked-u": ("MT-Diffusion-U", (23.77, 26.00, 25.22, 0.57, 0.55)),
    "masked-x": ("MT-Diffusion-X", (34.53, 9.85, 15.78, 0.68, 0.64)),
    "label-m": ("MT-Diffusion-M", (15.66, 33.92, 21.63, 0.54, 0.55)),
    "label-e": ("MT-Diffusion-E", (11.86, 41.00, 22.37, 0.48, 0.43)),
}
TABLE2_METRICS = ("IS", "FID", "sFID", "precision", "recall")
# Table 1, ImageNet: LPIPS of (original, restored) for masks of m patches.
PATCHES = (5, 10, 15, 20)
PAPER_TABLE1 = {
    "clean_masked": (0.311, 0.414, 0.461, 0.491),
    "sdedit": (0.400, 0.466, 0.497, 0.513),
    "repaint": None,
    "mt_x": (0.035, 0.068, 0.099, 0.133),
}
# Table 4, Cityscapes labels -> photo: per-pixel accuracy, per-class accuracy, class IoU.
PAPER_TABLE4 = {"seg2img-single": (0.72, 0.54, 0.32), "seg2img": (0.95, 0.85, 0.70)}
SEG_METRICS = ("pixel_accuracy", "class_accuracy", "class_iou")


TITLES = {"table2": "Table 2", "table1": "Table 1", "table4": "Table 4", "figure6": "Figure 6"}
NAMES = {
    "ddpm": "single-task DDPM",
    "masked-u": "MT-Diffusion-U",
    "masked-x": "MT-Diffusion-X",
    "label-m": "MT-Diffusion-M",
    "label-e": "MT-Diffusion-E",
    "seg2img": "MT-Diffusion (-X)",
    "seg2img-single": "single-task conditional diffusion",
    "label-m-classifier-only": "the M network trained only to classify",
    "label-e-classifier-only": "the E network trained only to classify",
    "clean_masked": "clean vs masked (the input itself)",
    "sdedit": "SDEdit-style (DDPM arm, from t = T/2)",
    "repaint": "RePaint-style (DDPM arm, no resampling)",
    "mt_x": "MT-Diffusion-X (restore)",
}
