"""Files written whole or not at all: a temporary file renamed over the target."""

from __future__ import annotations

import contextlib
import os
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, fsync: bool = True, **kwargs) -> Iterator[IO]:
    """Opens a temporary file beside `path`; on a clean exit it replaces `path`.

    A reader, or a process killed mid-write, sees the old file or the new one,
    never half of one; an exception leaves `path` untouched and no temporary
    file behind. `fsync=False` skips flushing to disk (caches that can be
    rebuilt); `kwargs` go to `open`.

    Examples:
        >>> with atomic_open("skipped.txt") as f:
        ...     _ = f.write("nothing skipped\\n")
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
