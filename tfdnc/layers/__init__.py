"""Keras layers of tfdnc."""

from tfdnc.layers.masks import SubspaceMasks
from tfdnc.layers.normalization import L2Normalize, PixelNormalization

__all__ = ["L2Normalize", "PixelNormalization", "SubspaceMasks"]
