"""Images listed in a CSV file: `path,label[,split]`.

    path,label,split
    images/0001.jpg,17,train
    images/0002.jpg,17,train
    images/0107.jpg,42,query
    images/0108.jpg,42,gallery

- `path`: relative to the CSV file's folder (or absolute).
- `label`: an integer class id, or any class name (names are mapped to
  ids in sorted order and kept per image in `extra["class_names"]`).
- `split` (optional): `train`, `test`, `query` or `gallery`. Without it,
  classes are split disjointly (first `train_fraction` of the sorted classes
  train). Query and gallery rows make a query-vs-gallery evaluation, as for
  In-shop.

A header line is optional (recognised by its first field being `path`).
"""

from __future__ import annotations

import csv
import os

import numpy as np

from tfdnc.datasets.base import DataSplits, ImageSet
from tfdnc.datasets.classsplit import class_ids, split_classes
from tfdnc.datasets.errors import DatasetError
from tfdnc.datasets.listfile import Row, check_images_exist, require_file

SPLITS = ("train", "test", "query", "gallery")


def load_csv(
    data_dir: str | None = None,
    train_fraction: float = 0.5,
    check_files: bool = True,
) -> DataSplits:
    """Loads images listed in a CSV file.

    Args:
        data_dir: the CSV file, or a folder holding exactly one `.csv` file.
        train_fraction: share of classes that train when there is no split column.
        check_files: check that every listed image exists.

    Returns:
        `DataSplits` with `test`, or `query` and `gallery`, or both;
        protocol "default".

    Examples:
        >>> splits = load_csv("/data/products/labels.csv")  # doctest: +SKIP
    """
    path = _csv_path(data_dir)
    rows, files, labels, splits = _read_lines(path)
    if check_files:
        check_images_exist(files, rows)
    extra = {}
    if all(_is_int(v) for v in labels):
        ids = np.array([int(v) for v in labels], dtype=np.int64)
    else:
        ids, _ = class_ids(labels)
        extra["class_names"] = np.array(labels)
    everything = ImageSet(labels=ids, paths=files, name="csv", extra=extra)
    if splits[0] is None:
        train_names, _ = split_classes(sorted(set(labels)), train_fraction, path)
        is_train = np.array([v in train_names for v in labels])
        return DataSplits(train=everything.subset(is_train, name="csv/train"),
                          test=everything.subset(~is_train, name="csv/test"), protocol="default")
    return _listed_splits(everything, np.array(splits), path)


def _read_lines(path: str) -> tuple[list[Row], list[str], list[str], list[str | None]]:
    """(rows, image files, labels as written, split or None) of every image line of the CSV file."""
    rows, files, labels, splits = [], [], [], []
    folder = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8-sig") as f:  # tolerate a BOM (Excel)
        for number, record in enumerate(csv.reader(f), start=1):
            record = [field.strip() for field in record]
            if not any(record):
                continue
            if not rows and record[0].lower() == "path":
                continue
            if len(record) not in (2, 3):
                raise DatasetError(
                    f"malformed line: expected 2 or 3 fields (path,label[,split]), got {len(record)}: "
                    f"{','.join(record)!r}", path, number,
                )
            if splits and (len(record) == 3) != (splits[0] is not None):
                raise DatasetError("every line must have a split column, or none", path, number)
            split = record[2].lower() if len(record) == 3 else None
            if split is not None and split not in SPLITS:
                raise DatasetError(f"split must be one of {SPLITS}, got {record[2]!r}", path, number)
            if not record[0] or not record[1]:
                raise DatasetError("empty path or label", path, number)
            rows.append(Row(path, number, tuple(record)))
            files.append(record[0] if os.path.isabs(record[0]) else os.path.join(folder, record[0]))
            labels.append(record[1])
            splits.append(split)
    if not rows:
        raise DatasetError("the CSV file lists no images", path)
    return rows, files, labels, splits


def _listed_splits(everything: ImageSet, splits: np.ndarray, path: str) -> DataSplits:
    """The sets the split column names; train and an evaluation (test, or query and gallery) are required."""
    sets = {s: everything.subset(splits == s, name=f"csv/{s}") for s in SPLITS if (splits == s).any()}
    if "train" not in sets:
        raise DatasetError("the train split has no classes: no line has split 'train'", path)
    if ("query" in sets) != ("gallery" in sets):
        missing = "gallery" if "query" in sets else "query"
        raise DatasetError(f"the {missing} split has no classes: 'query' and 'gallery' come together", path)
    if "test" not in sets and not ("query" in sets and "gallery" in sets):
        raise DatasetError("no evaluation split: give 'test' lines, or both 'query' and 'gallery' lines", path)
    return DataSplits(train=sets["train"], test=sets.get("test"), query=sets.get("query"),
                      gallery=sets.get("gallery"), protocol="default")


def _csv_path(data_dir: str | None) -> str:
    if data_dir is None:
        raise DatasetError("the csv data set needs the CSV file (--data-dir path/to/file.csv)")
    if os.path.isdir(data_dir):
        found = sorted(f for f in os.listdir(data_dir) if f.lower().endswith(".csv"))
        if len(found) != 1:
            raise DatasetError(
                f"expected exactly one .csv file in this folder, found {len(found)}: name the file instead",
                data_dir,
            )
        return os.path.join(data_dir, found[0])
    return require_file(data_dir, "CSV file")


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True
