"""Datasets: `load(source, ...)` returns an ImageSet of uint8 images [N, C, H, W]."""

from denoiserlab.data.imageset import ImageSet, float_to_uint8, uint8_to_float
from denoiserlab.data.load import load

__all__ = ["ImageSet", "load", "uint8_to_float", "float_to_uint8"]
