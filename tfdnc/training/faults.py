"""Test-only fault injection: SIGKILL this process at a named point.

A kill "after the re-clustering, before the backup" or "while the backup is
written" cannot be timed from outside the process. The fault-injection tests
(tests/test_reliability.py, bench/bench_reliability.py) set the environment
variable TFDNC_TEST_KILL_AT to `<point>@<epoch>` (or just `<point>`), and the
code calls `kill_point(point, epoch=...)` there. Unset (always, outside
tests), `kill_point` does nothing but read one environment variable.

Points (epochs are 1-based, as printed):
    mid_epoch@E      after half of the batches of epoch E
    after_recluster@E    right after "re-clustered after epoch E" is printed
    backup@N         generation N's files are written, its COMMIT is not
    committed@N      generation N is committed, the older ones are not pruned yet; at the
                     last epoch this is "killed during the final evaluation": what is left
                     is the final evaluation, model.keras, metrics.json and the export
    export           half a second after the export started (a timer)

Examples:
    >>> os.environ["TFDNC_TEST_KILL_AT"] = "after_recluster@2"  # doctest: +SKIP
    >>> kill_point("after_recluster", epoch=2)   # the process dies here  # doctest: +SKIP
"""

from __future__ import annotations

import os
import signal
import sys
import threading

ENV = "TFDNC_TEST_KILL_AT"


def requested(point: str, epoch: int | None = None) -> bool:
    """Whether TFDNC_TEST_KILL_AT names `point` (at `epoch`, when it names one)."""
    value = os.environ.get(ENV, "")
    if not value:
        return False
    name, _, at = value.partition("@")
    return name == point and (not at or epoch is None or int(at) == int(epoch))


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
