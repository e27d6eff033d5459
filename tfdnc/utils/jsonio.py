"""JSON files: read with an error naming the file, written atomically."""

from __future__ import annotations

import json
import os

import numpy as np

from tfdnc.utils.atomic import atomic_open


def read_json(path: str | os.PathLike, *, what: str = ""):
    """The parsed content of `path`; `ValueError` naming the file when it cannot be read.

    `what` prefixes the message (e.g. "--config", "report").
    """
    path = os.fspath(path)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        prefix = f"{what}: " if what else ""
        raise ValueError(f"{prefix}cannot read {path!r}: {exc}") from exc


def write_json(path: str | os.PathLike, values, *, indent: int = 2) -> None:
    """Writes `values` to `path` through a temporary file and a rename.

    A reader (or a run killed mid-write) sees the old file or the new one,
    never half of one. NumPy scalars and arrays are written as numbers/lists.
    """
    with atomic_open(path) as f:
        json.dump(values, f, indent=indent, default=_jsonable)


def _jsonable(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
