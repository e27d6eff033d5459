"""Keras callbacks that run Divide & Conquer inside `model.fit` (their homes: `tfdnc.training`).

`DivideAndConquerSchedule` is built from the parts in `tfdnc.training`
(phase policy, re-clusterer, cluster-state store); it is importable from
here, where user code has always found it.
"""

from tfdnc.training.callbacks import HistoryWriter, NonFiniteLossError, NonFiniteLossGuard
from tfdnc.training.schedule import DivideAndConquerSchedule

__all__ = ["DivideAndConquerSchedule", "HistoryWriter", "NonFiniteLossError", "NonFiniteLossGuard"]
