"""The Symmetrical Synthesis Keras layer, re-exported from where the method lives.

Symmetrical Synthesis is a loss-side method (it replaces a loss's negative
distances), so its code is in :mod:`tfdnc.losses.synthesis`; the layer is
importable from `tfdnc.layers` too. Layers import losses, never the reverse.
"""

from tfdnc.losses.synthesis import SymmetricalSynthesis

__all__ = ["SymmetricalSynthesis"]
