"""Keras layers of tfdnc."""

from tfdnc.layers.masks import SubspaceMasks
from tfdnc.layers.normalization import L2Normalize, PixelNormalization, l2_normalize
from tfdnc.layers.synthesis import SymmetricalSynthesis

__all__ = ["L2Normalize", "PixelNormalization", "SubspaceMasks", "SymmetricalSynthesis", "l2_normalize"]
