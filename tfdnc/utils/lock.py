"""An exclusive lock on a folder, held by one process at a time, naming its holder.

`DirectoryLock` takes an `flock` on DIRECTORY/.lock and writes its pid, host
and start time into it. The kernel releases a `flock` when its process dies,
however it dies (SIGKILL, out of memory, preemption), so the lock of a killed
process never blocks the next one: the file may still name the dead pid, but
nobody holds it. `flock` locks belong to an open file, so two locks of one
folder conflict even within one process (and one thread cannot take the same
lock twice).

The run directory (`tfdnc.training.lock.RunLock`: a second training is
refused) and the index writers (`tfdnc.index.lock`: a second writer waits)
use it.

Examples:
    >>> with DirectoryLock("exports/dnc/1.index").acquire(timeout=None):  # wait for the holder
    ...     pass
    >>> lock = DirectoryLock("runs/a").acquire()   # DirectoryLockedError naming the holder if taken
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import Callable

LOCK = ".lock"
_POLL_SECONDS = 0.05


class DirectoryLockedError(RuntimeError):
    """Another live process holds the lock."""


class DirectoryLock:
    """An exclusive `flock` on DIRECTORY/NAME, recording the holder's pid, host and start time.

    Args:
        directory: the folder to lock (created if needed).
        name: the lock file's name inside it.
        what: how messages name the folder ("run directory", "index").
    """

    error: type[DirectoryLockedError] = DirectoryLockedError

    def __init__(self, directory: str | os.PathLike, name: str = LOCK, *, what: str = "folder"):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, name)
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self, timeout: float | None = 0, *,
                on_wait: Callable[[dict], None] | None = None) -> "DirectoryLock":
        """Takes the lock; returns self.

        Args:
            timeout: seconds to wait for the holder to let go: 0 (default)
                refuses at once, None waits as long as it takes.
            on_wait: called once with the holder's record (pid, host,
                started) when the lock is taken and this call has to wait.

        Raises:
            DirectoryLockedError (or the subclass's `error`): another process
                holds the lock and did not let go within `timeout`.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path!r} is held by this object already")
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._take(fd, timeout, on_wait)
        except BaseException:
            os.close(fd)
            raise
        stale = _read_holder(fd)
        if stale.get("pid") and stale.get("pid") != os.getpid():
            self.took_over(stale)
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

    def holder(self) -> dict:
        """The record of the last process that took the lock ({} when none)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return {}
        try:
            return _read_holder(fd)
        finally:
            os.close(fd)

    def busy_message(self, holder: dict) -> str:
        """The error's words when another process holds the lock."""
        return (f"{self.what} {self.directory!r} is in use by process {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')} (started {holder.get('started', '?')})")

    def took_over(self, stale: dict) -> None:
        """Called when the lock file names another process, which has let go (ended)."""

    def __enter__(self) -> "DirectoryLock":
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _take(self, fd: int, timeout: float | None, on_wait) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        holder = _read_holder(fd)
        if timeout is not None and timeout <= 0:
            raise self.error(self.busy_message(holder))
        if on_wait is not None:
            on_wait(holder)
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel wakes us when the holder lets go or dies
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise self.error(f"{self.busy_message(_read_holder(fd))}; waited {timeout:g} s") from None
                time.sleep(_POLL_SECONDS)


def _read_holder(fd: int) -> dict:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
