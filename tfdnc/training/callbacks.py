"""The run's callbacks besides the schedule: a guard against a non-finite loss and the history file."""

from __future__ import annotations

import math
from typing import Callable

import keras
import numpy as np

from tfdnc.rundir import RunDir


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops `fit` with a clear error at the first non-finite loss.

    Unlike `keras.callbacks.TerminateOnNaN` it raises at once, before the
    epoch ends, so checkpoint callbacks never save the broken weights and the
    last good checkpoint stays the one a resumed run starts from.

    Args:
        checkpoint_hint: text naming the last good checkpoint and how to
            resume from it, for the message; or a function returning that
            text when the error is raised (so it names only files that exist
            then). Default: generic advice.
    """

    def __init__(self, checkpoint_hint: str | Callable[[], str] = ""):
        super().__init__()
        self.checkpoint_hint = checkpoint_hint
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            hint = self.checkpoint_hint() if callable(self.checkpoint_hint) else self.checkpoint_hint
            hint = hint or "Lower the learning rate or check the input data."
            raise NonFiniteLossError(
                f"the training loss became {float(loss)} at epoch {self._epoch + 1}, batch {batch + 1}. {hint}"
            )


class HistoryWriter(keras.callbacks.Callback):
    """Rewrites RUN_DIR/history.json each epoch: the logs plus K and cluster sizes.

    Args:
        run_dir: the `RunDir` to write into.
        schedule: the `DivideAndConquerSchedule` whose per-epoch records join the logs.
    """

    def __init__(self, run_dir: RunDir, schedule):
        super().__init__()
        self.run_dir = run_dir
        self.schedule = schedule

    def on_epoch_end(self, epoch, logs=None):
        # A resumed run re-does epochs after its checkpoint; keep one record each.
        records = [r for r in self.run_dir.history() if r.get("epoch", -1) < epoch]
        entry = {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}
        if self.schedule.history and self.schedule.history[-1]["epoch"] == epoch:
            entry.update(self.schedule.history[-1])
        entry["epoch"] = epoch
        records.append(entry)
        self.run_dir.write_history(records)
