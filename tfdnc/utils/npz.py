""".npz files read as plain arrays: never a pickle, whoever wrote the file.

Run directories, galleries and index folders are copied between machines
and shared, so tfdnc reads every .npz as data only. NumPy unpickles an
object array when asked to (`allow_pickle=True`), and a pickle can run any
code as it loads; `read_npz` never asks, and names the file and entry that
would need it.

Examples:
    >>> arrays = read_npz("runs/default/backup/gen-00000002/random.npz", what="random state")
    >>> sorted(arrays)[:2]
    ['numpy:cached_gaussian', 'numpy:has_gauss']
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

_NEVER = "tfdnc never unpickles a file it is handed (a pickle can run code as it loads), so it does not read this one"


class UnsafeFileError(RuntimeError):
    """A file tfdnc will not load because loading it could run code (a pickle inside).

    Not a ValueError: a reader that tries the previous backup generation on a
    ValueError must not skip past such a file; it is refused, and the run
    directory left as it is.
    """


def read_npz(path: str | os.PathLike, *, what: str = "file") -> dict[str, np.ndarray]:
    """Every entry of the .npz at `path`, loaded with `allow_pickle=False`.

    Raises:
        UnsafeFileError: an entry (an object array) or the file itself is a pickle.
        ValueError: the file is not a readable .npz (truncated, another format).
        OSError: the file cannot be opened.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # pickle protocol 2-5
        raise UnsafeFileError(f"{what}: {path!r} is a pickle, not an .npz; {_NEVER}")
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip's first entry, or an empty zip
        # Checked here: given anything else, np.load would try to unpickle it.
        raise ValueError(f"{what}: {path!r} is not an .npz archive")
    key = None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {}
            for key in data.files:
                arrays[key] = data[key]
            return arrays
    except ValueError as exc:
        # NumPy's refusal of an object array: "Object arrays cannot be loaded when allow_pickle=False".
        if "allow_pickle" in str(exc):
            raise UnsafeFileError(f"{what}: entry {key!r} of {path!r} holds a pickled Python object; "
                                  f"{_NEVER}") from None
        raise ValueError(f"{what}: {path!r}: {exc}") from exc
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{what}: {path!r} is not a readable .npz ({exc})") from exc


def check_npz(path: str | os.PathLike, *, what: str = "file") -> None:
    """Raises `UnsafeFileError` if the .npz at `path` could only be read by unpickling it.

    For a check before anything is written (a resume); a file that is merely
    damaged or absent passes here, and its reader reports it when it loads.
    """
    try:
        read_npz(path, what=what)
    except (OSError, ValueError):
        return


__all__ = ["UnsafeFileError", "check_npz", "read_npz"]
