"""Test-only fault injection: SIGKILL this process at a named point.

A kill "after the re-clustering, before the backup" or "while the backup is
written" cannot be timed from outside the process. The fault-injection tests
(tests/test_reliability.py, bench/bench_reliability.py) set the environment
variable TFDNC_TEST_KILL_AT to `<point>@<epoch>` (or just `<point>`).

Production code reaches this module through one hook, `checkpoint_reached`,
called from one callback, `tfdnc.training.backup.GenerationBackup`, which
sees every point of an epoch that matters to a resume (a batch, the end of
the epoch after the re-clustering, the stages of its own commit, which
`GenerationStore.commit` reports to it), and from `train.py` for the export.
Unset (always, outside tests), the hook does nothing but read one
environment variable.

Points (epochs are 1-based, as printed):
    mid_epoch@E      after half of the batches of epoch E
    after_recluster@E    after "re-clustered after epoch E" was printed, before that epoch's backup
    backup@N         generation N's files are written, its COMMIT is not
    committed@N      generation N is committed, the older ones are not pruned yet; at the
                     last epoch this is "killed during the final evaluation": what is left
                     is the final evaluation, model.keras, metrics.json and the export
    export           half a second after the export started (a timer)

Examples:
    >>> os.environ["TFDNC_TEST_KILL_AT"] = "after_recluster@2"  # doctest: +SKIP
    >>> checkpoint_reached("after_recluster", epoch=2)   # the process dies here  # doctest: +SKIP
"""

from __future__ import annotations

import os
import signal
import sys
import threading

ENV = "TFDNC_TEST_KILL_AT"
# Points killed from a timer, seconds after they are reached (the export runs in this thread).
DELAYS = {"export": 0.5}


def requested(point: str, epoch: int | None = None) -> bool:
    """Whether TFDNC_TEST_KILL_AT names `point` (at `epoch`, when it names one)."""
    value = os.environ.get(ENV, "")
    if not value:
        return False
    name, _, at = value.partition("@")
    return name == point and (not at or epoch is None or int(at) == int(epoch))


def checkpoint_reached(point: str, epoch: int | None = None) -> None:
    """The hook production code calls at a named point of a run; kills the process there in a fault test."""
    kill_point(point, epoch, delay=DELAYS.get(point))


def kill_point(point: str, epoch: int | None = None, delay: float | None = None) -> None:
    """SIGKILLs this process if TFDNC_TEST_KILL_AT names this point (after `delay` s, from a timer)."""
    if not requested(point, epoch):
        return
    print(f"[tfdnc] test fault injection: SIGKILL at {point}" + (f"@{epoch}" if epoch is not None else ""),
          flush=True)
    sys.stdout.flush()

    def kill():
        os.kill(os.getpid(), signal.SIGKILL)

    if delay is None:
        kill()
    else:
        timer = threading.Timer(delay, kill)
        timer.daemon = True
        timer.start()
