"""Data: in-memory image sets, the paper's masks, an exactly resumable batch stream."""
from .loader import BatchStream
from .masking import apply_mask, half_mask, make_mask, random_patch_mask
from .sources import DataError, ImageSet, load_fashion_mnist, load_mnist, load_source

__all__ = ["BatchStream", "DataError", "ImageSet", "load_mnist", "load_fashion_mnist", "load_source",
           "make_mask", "random_patch_mask", "half_mask", "apply_mask"]
