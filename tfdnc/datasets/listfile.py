"""Reading the text lists benchmark data sets ship, with errors that say where.

Every benchmark describes its images with whitespace-separated text lists
(`images.txt`, `Ebay_train.txt`, ...). The helpers here read such lists line
by line and turn every problem (a missing file, a short line, a number that
is not one, an image listed but absent) into a `DatasetError` naming the file
and the line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from tfdnc.datasets.errors import DatasetError


@dataclass(frozen=True)
class Row:
    """One non-blank line of a list file, split on whitespace."""

    path: str
    line: int
    fields: tuple[str, ...]

    def int(self, index: int, what: str) -> int:
        """Field `index` as an integer; DatasetError naming `what` otherwise."""
        return self._convert(index, what, int, "an integer")

    def float(self, index: int, what: str) -> float:
        """Field `index` as a number; DatasetError naming `what` otherwise."""
        return self._convert(index, what, float, "a number")

    def _convert(self, index: int, what: str, kind, kind_name: str):
        value = self.fields[index]
        try:
            return kind(value)
        except ValueError:
            raise DatasetError(f"{what} must be {kind_name}, got {value!r}", self.path, self.line) from None


def require_file(path: str, what: str) -> str:
    """Returns `path` if it is a file; DatasetError saying what is missing otherwise."""
    if not os.path.isfile(path):
        raise DatasetError(f"{what} not found", path)
    return path


def read_rows(
    path: str,
    columns: Sequence[str],
    *,
    what: str = "list file",
    skip: int = 0,
    header: Sequence[str] | None = None,
    min_fields: int | None = None,
) -> list[Row]:
    """Reads a whitespace-separated list file.

    Args:
        path: the list file.
        columns: the column names, used in error messages; every line must
            have exactly this many fields (see `min_fields`).
        what: what the file is, for the "not found" message.
        skip: leading lines to skip without looking at them.
        header: if given, the (first non-skipped) header line must hold these
            words (case-insensitive), and is not returned.
        min_fields: allow lines with between `min_fields` and `len(columns)`
            fields.

    Returns:
        The non-blank lines as `Row`s, with 1-based line numbers.
    """
    require_file(path, what)
    low = len(columns) if min_fields is None else min_fields
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    number = skip if header is None else _after_header(lines, skip, header, path)
    for index in range(number, len(lines)):
        text = lines[index].strip()
        if not text:
            continue
        fields = tuple(text.split())
        if not low <= len(fields) <= len(columns):
            raise _malformed(text, len(fields), columns, low, path, index + 1)
        rows.append(Row(path, index + 1, fields))
    if not rows:
        raise DatasetError(f"{what} lists no images", path)
    return rows


def _after_header(lines: list[str], start: int, header: Sequence[str], path: str) -> int:
    """The index of the line after the header, the first non-blank line from `start`, checked to be `header`."""
    number = start
    while number < len(lines) and not lines[number].strip():
        number += 1
    if number >= len(lines):
        raise DatasetError(f"the header line {' '.join(header)!r} is missing (empty file)", path)
    found = [w.lower() for w in lines[number].split()]
    if found != [w.lower() for w in header]:
        raise DatasetError(
            f"expected the header {' '.join(header)!r}, got {lines[number].strip()!r}",
            path, number + 1,
        )
    return number + 1


def _malformed(text: str, count: int, columns: Sequence[str], low: int, path: str, line: int) -> DatasetError:
    """The error for a line of `count` fields where `low`..`len(columns)` were expected."""
    expected = " ".join(columns[:low]) if low == len(columns) else (
        f"{' '.join(columns[:low])} [{' '.join(columns[low:])}]"
    )
    return DatasetError(
        f"malformed line: expected {low if low == len(columns) else f'{low}-{len(columns)}'} "
        f"fields ({expected}), got {count}: {text!r}",
        path, line,
    )


def check_images_exist(files: Sequence[str], rows: Sequence[Row]) -> None:
    """Raises DatasetError at the first listed image that is not a file.

    `files[i]` is the image that `rows[i]` lists.
    """
    for file, row in zip(files, rows):
        if not os.path.isfile(file):
            raise DatasetError(f"image listed but absent: {file}", row.path, row.line)


def check_unique(keys: Sequence, rows: Sequence[Row], what: str) -> None:
    """Raises DatasetError at the first repeated key (e.g. an image id)."""
    seen: dict = {}
    for key, row in zip(keys, rows):
        if key in seen:
            raise DatasetError(f"{what} {key!r} repeats line {seen[key]}", row.path, row.line)
        seen[key] = row.line


def require_classes(labels: np.ndarray, split: str, source: str, hint: str = "") -> None:
    """DatasetError if a split came out empty (e.g. a list of the wrong classes)."""
    if len(np.unique(labels)) == 0:
        raise DatasetError(f"the {split} split has no classes{': ' + hint if hint else ''}", source)


def require_dir(data_dir: str | None, dataset: str) -> str:
    """`data_dir` if it is a folder; DatasetError otherwise."""
    if data_dir is None:
        raise DatasetError(f"the {dataset} data set needs a data directory (--data-dir)")
    if not os.path.isdir(data_dir):
        raise DatasetError(f"{dataset} data directory not found", data_dir)
    return data_dir


def find_root(data_dir: str | None, marker: str, subfolders: Iterable[str], dataset: str) -> str:
    """The folder holding `marker`: `data_dir` itself or one of its `subfolders`.

    Users point `--data-dir` either at the unpacked data set or at the folder
    they unpacked it into; both work.
    """
    require_dir(data_dir, dataset)
    candidates = [data_dir] + [os.path.join(data_dir, s) for s in subfolders]
    for folder in candidates:
        if os.path.exists(os.path.join(folder, marker)):
            return folder
    raise DatasetError(
        f"{marker} not found here"
        + (f" nor in {', '.join(subfolders)}" if subfolders else "")
        + f": is this the {dataset} data set as distributed?",
        data_dir,
    )
