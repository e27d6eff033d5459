"""Stanford Online Products (Oh Song et al. 2016): 120,053 images, 22,634 products.

Expected layout (`Stanford_Online_Products.zip`, unpacked)::

    Stanford_Online_Products/
        Ebay_train.txt   image_id class_id super_class_id path   (header line)
        Ebay_test.txt    the same
        bicycle_final/111085122871_0.JPG ...

The split is the one the lists define: 59,551 training images of 11,318
products and 60,502 test images of 11,316 products. The 12 super-classes
(bicycle, cabinet, ...) are kept per image in `extra["super_labels"]`.
"""

from __future__ import annotations

import os

import numpy as np

from tfdnc.datasets.base import DataSplits, ImageSet
from tfdnc.datasets.listfile import (
    check_images_exist, check_unique, find_root, read_rows, require_classes,
)

_COLUMNS = ("image_id", "class_id", "super_class_id", "path")


def load_sop(data_dir: str | None = None, check_files: bool = True) -> DataSplits:
    """Loads Stanford Online Products from `Ebay_train.txt` / `Ebay_test.txt`.

    Args:
        data_dir: the `Stanford_Online_Products` folder or the folder holding it.
        check_files: check that every listed image exists.

    Returns:
        `DataSplits(train, test, protocol="sop")`; labels are the lists'
        `class_id`s, `extra["super_labels"]` their `super_class_id`s.

    Examples:
        >>> splits = load_sop("/data/Stanford_Online_Products")  # doctest: +SKIP
        >>> splits.test.num_classes   # 11316  # doctest: +SKIP
    """
    root = find_root(data_dir, "Ebay_train.txt", ["Stanford_Online_Products"], "Stanford Online Products")
    sets = {}
    for split in ("train", "test"):
        path = os.path.join(root, f"Ebay_{split}.txt")
        rows = read_rows(path, _COLUMNS, header=_COLUMNS, what=f"SOP {split} list")
        check_unique([r.int(0, "image_id") for r in rows], rows, "image_id")
        labels = np.array([r.int(1, "class_id") for r in rows], dtype=np.int64)
        super_labels = np.array([r.int(2, "super_class_id") for r in rows], dtype=np.int64)
        files = [os.path.join(root, r.fields[3]) for r in rows]
        if check_files:
            check_images_exist(files, rows)
        require_classes(labels, split, path)
        sets[split] = ImageSet(
            labels=labels, paths=files, name=f"sop/{split}",
            extra={"super_labels": super_labels},
        )
    return DataSplits(train=sets["train"], test=sets["test"], protocol="sop")
