"""Networks: the ADM-style U-Net backbone and the multi-head MT-Diffusion model."""

from .mtmodel import MTModel
from .unet import UNet, output_block

__all__ = ["UNet", "MTModel", "output_block"]
