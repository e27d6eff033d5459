"""One training process per run directory.

Two `train.py` writing into one run directory overwrite each other's
backups and clusters. `RunLock` is a `tfdnc.utils.lock.DirectoryLock` on
RUN_DIR/.lock that refuses a second process at once, naming the holder. The
kernel releases the lock when its process dies, however it dies (SIGKILL,
out of memory, preemption), so the lock of a killed run never blocks
`--resume`: the file may still name the dead pid, but nobody holds it.

Examples:
    >>> lock = RunLock("runs/a").acquire()   # RunLockedError naming the holder's pid if taken
    >>> # ... train ...
    >>> lock.release()
"""

from __future__ import annotations

import os

from tfdnc.utils.lock import LOCK, DirectoryLock, DirectoryLockedError

__all__ = ["LOCK", "RunLock", "RunLockedError"]


class RunLockedError(DirectoryLockedError):
    """Another live process trains in this run directory."""


class RunLock(DirectoryLock):
    """An exclusive lock on a run directory, held while training runs.

    Args:
        directory: the run directory (created if needed).
    """

    error = RunLockedError

    def __init__(self, directory: str | os.PathLike):
        super().__init__(directory, LOCK, what="run directory")

    def busy_message(self, holder: dict) -> str:
        return (f"{super().busy_message(holder)}; wait for it to end, stop it, or choose another --run-dir")

    def took_over(self, stale: dict) -> None:
        print(f"[tfdnc] taking over the lock of {self.directory!r} from process {stale['pid']}, which has ended")
