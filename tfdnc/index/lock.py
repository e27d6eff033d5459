"""One writer at a time per index: the lock `tfdnc index build | add | remove | calibrate` hold.

A writer reads the newest index version, changes it and saves the next one.
Two writers doing that at once both read version N and the second's N + 2
lacks the first's change (a lost update). So writers of one index folder
(EXPORT_VERSION.index) hold `HOME/.lock`, a `tfdnc.utils.lock.DirectoryLock`,
from reading the newest version to renaming the next into place; a second
writer waits for it (the kernel lets go of the lock of a killed writer).
Readers (`open_index`, search) take no lock: versions are never changed
once in place.

The lock is re-entrant within a thread, so `save_index` (which takes it)
can run inside `update_index` (which holds it).

Examples:
    >>> from tfdnc.index import open_index, save_index
    >>> with index_lock("exports/dnc/1.index"):
    ...     index = open_index("exports/dnc/1.index")       # the newest version, nobody writes
    ...     removed = index.remove_paths(["gallery/cat/3.jpg"])
    ...     path = save_index(index, "exports/dnc/1.index")        # the next version
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

from tfdnc.utils.lock import LOCK, DirectoryLock, DirectoryLockedError

# realpath of a held home -> (holding thread, depth, lock).
_HELD: dict[str, tuple[int, int, DirectoryLock]] = {}
_HELD_GUARD = threading.Lock()


class IndexLockedError(DirectoryLockedError):
    """Another writer held the index past the time given to wait."""


class IndexLock(DirectoryLock):
    """The writers' lock of one index folder (HOME/.lock)."""

    error = IndexLockedError

    def __init__(self, home: str | os.PathLike):
        super().__init__(home, LOCK, what="index")

    def busy_message(self, holder: dict) -> str:
        return f"{super().busy_message(holder)} writing a new version"


@contextmanager
def index_lock(home: str | os.PathLike, timeout: float | None = None) -> Iterator[None]:
    """Holds the writers' lock of index folder `home` for the block (waiting for another writer).

    Args:
        home: the folder of index versions (created if needed).
        timeout: seconds to wait for another writer (None: as long as it
            takes); then `IndexLockedError` naming it.
    """
    home = os.fspath(home)
    os.makedirs(home, exist_ok=True)
    key = os.path.realpath(home)
    me = threading.get_ident()
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None and held[0] == me:
            _HELD[key] = (me, held[1] + 1, held[2])
            lock = None
        else:
            lock = IndexLock(home)
    if lock is None:  # this thread holds it already
        try:
            yield
        finally:
            with _HELD_GUARD:
                owner, depth, outer = _HELD[key]
                _HELD[key] = (owner, depth - 1, outer)
        return
    lock.acquire(timeout, on_wait=lambda holder: print(
        f"[tfdnc] waiting for process {holder.get('pid', '?')} on {holder.get('host', '?')}, which is "
        f"writing index {home!r}", file=sys.stderr))
    with _HELD_GUARD:
        _HELD[key] = (me, 1, lock)
    try:
        yield
    finally:
        with _HELD_GUARD:
            del _HELD[key]
        lock.release()
