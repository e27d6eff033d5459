"""Keras layers of tfdnc."""

from tfdnc.layers.normalization import L2Normalize, PixelNormalization, l2_normalize

__all__ = ["L2Normalize", "PixelNormalization", "l2_normalize"]
