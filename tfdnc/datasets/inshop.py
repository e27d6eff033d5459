"""In-shop Clothes Retrieval (DeepFashion, Liu et al. 2016): 52,712 images, 7,982 items.

Expected layout (the benchmark folder as distributed, `Img/img.zip` unpacked)::

    In-shop Clothes Retrieval Benchmark/
        Eval/list_eval_partition.txt
        Img/img/WOMEN/Dresses/id_00000002/02_1_front.jpg ...

`list_eval_partition.txt` starts with the number of images and a header
line (`image_name item_id evaluation_status`); the status is `train`,
`query` or `gallery`. The list may also sit directly in the data directory
and the images in `img/` next to it. Labels are the numeric part of the
item ids (`id_00000002` -> 2). Standard split: 25,882 training images of
3,997 items; 14,218 queries and 12,612 gallery images of 3,985 items.
"""

from __future__ import annotations

import os

import numpy as np

from tfdnc.datasets.base import DataSplits, ImageSet
from tfdnc.datasets.errors import DatasetError
from tfdnc.datasets.listfile import check_images_exist, read_rows, require_classes, require_dir

_COLUMNS = ("image_name", "item_id", "evaluation_status")
_STATUSES = ("train", "query", "gallery")


def load_inshop(data_dir: str | None = None, check_files: bool = True) -> DataSplits:
    """Loads In-shop Clothes with its train / query / gallery partition.

    Args:
        data_dir: the benchmark folder (holding `Eval/` and `Img/`), or a
            folder with `list_eval_partition.txt` and `img/`.
        check_files: check that every listed image exists.

    Returns:
        `DataSplits(train, query=..., gallery=..., protocol="inshop")`.

    Examples:
        >>> splits = load_inshop("/data/inshop")  # doctest: +SKIP
        >>> len(splits.query), len(splits.gallery)   # (14218, 12612)  # doctest: +SKIP
    """
    require_dir(data_dir, "In-shop Clothes")
    candidates = [os.path.join(data_dir, "Eval", "list_eval_partition.txt"),
                  os.path.join(data_dir, "list_eval_partition.txt")]
    path = next((p for p in candidates if os.path.isfile(p)), candidates[0])
    rows = read_rows(path, _COLUMNS, skip=1, header=_COLUMNS, what="In-shop partition list")
    _check_count(path, len(rows))

    # Images are named relative to the folder that holds `img/`.
    bases = [data_dir, os.path.join(data_dir, "Img")]
    base = next((b for b in bases if os.path.exists(os.path.join(b, rows[0].fields[0]))), data_dir)
    files, labels, statuses = [], [], []
    for row in rows:
        name, item, status = row.fields
        if status not in _STATUSES:
            raise DatasetError(f"evaluation_status must be one of {_STATUSES}, got {status!r}",
                               row.path, row.line)
        if not item.startswith("id_") or not item[3:].isdigit():
            raise DatasetError(f"item_id must look like id_00000002, got {item!r}", row.path, row.line)
        files.append(os.path.join(base, name))
        labels.append(int(item[3:]))
        statuses.append(status)
    if check_files:
        check_images_exist(files, rows)

    everything = ImageSet(labels=np.array(labels, np.int64), paths=files, name="inshop")
    statuses = np.array(statuses)
    sets = {}
    for status in _STATUSES:
        sets[status] = everything.subset(statuses == status, name=f"inshop/{status}")
        require_classes(sets[status].labels, status, path, f"no line has status {status!r}")
    return DataSplits(train=sets["train"], query=sets["query"], gallery=sets["gallery"],
                      protocol="inshop")


def _check_count(path: str, found: int) -> None:
    """The first line holds the image count; a mismatch means a truncated file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline().strip()
    try:
        expected = int(first)
    except ValueError:
        raise DatasetError(f"the first line must be the number of images, got {first!r}", path, 1) from None
    if expected != found:
        raise DatasetError(f"the first line announces {expected} images but {found} are listed "
                           "(truncated file?)", path, 1)
