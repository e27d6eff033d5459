"""One training process per run directory.

Two `train.py` writing into one run directory overwrite each other's
backups and clusters. `RunLock` takes an exclusive `flock` on RUN_DIR/.lock
and writes its pid, host and start time into it. The kernel releases a
`flock` when its process dies, however it dies (SIGKILL, out of memory,
preemption), so the lock of a killed run never blocks `--resume`: the file
may still name the dead pid, but nobody holds it.

Example:
>>> lock = RunLock("runs/a").acquire()   # RunLockedError naming the holder's pid if taken
>>> ...
>>> lock.release()
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

LOCK = ".lock"


class RunLockedError(RuntimeError):
    """Another live process trains in this run directory."""


class RunLock:
    """An exclusive lock on a run directory, held while training runs.

    Args:
        directory: the run directory (created if needed).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, LOCK)
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Takes the lock; raises `RunLockedError` naming the holder when another process has it."""
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"run directory {self.directory!r} is in use by process {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')} (started {holder.get('started', '?')}); wait for it to end, "
                "stop it, or choose another --run-dir"
            ) from None
        stale = _read_holder(fd)
        if stale.get("pid") and stale.get("pid") != os.getpid():
            print(f"[tfdnc] taking over the lock of {self.directory!r} from process {stale['pid']}, which has ended")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Lets go of the lock (the file stays; an unheld lock file blocks nothing)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
