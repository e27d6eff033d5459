"""Your own images, one folder per class.

Two layouts::

    root/                       root/
        cat/001.jpg ...             train/cat/001.jpg ...
        dog/002.png ...             train/dog/...
        ...                         test/zebra/...

Without `train/` and `test/`, classes are split disjointly: the first
`train_fraction` of the class folders (sorted by name) train, the rest test.
Labels are the index of the class name among all class names (sorted);
the names themselves are kept per image in `extra["class_names"]`.
"""

from __future__ import annotations

import os

import numpy as np

from tfdnc.datasets.base import DataSplits, ImageSet
from tfdnc.datasets.classsplit import class_ids, split_classes
from tfdnc.datasets.errors import DatasetError
from tfdnc.datasets.listfile import require_dir
from tfdnc.utils import IMAGE_EXTENSIONS, list_image_files

# What tf.io.decode_image reads.


def load_image_folder(data_dir: str | None = None, train_fraction: float = 0.5) -> DataSplits:
    """Loads a folder-per-class image collection.

    Args:
        data_dir: the root folder (see the module docstring for layouts).
        train_fraction: share of the classes that train when the root has no
            `train/` and `test/` subfolders.

    Returns:
        `DataSplits(train, test, protocol="default")`.

    Example:
    >>> splits = load_image_folder("/data/my_products")
    >>> splits.test.extra["class_names"][:2]
    """
    require_dir(data_dir, "image-folder")
    has_split = os.path.isdir(os.path.join(data_dir, "train")) and os.path.isdir(os.path.join(data_dir, "test"))
    if has_split:
        found = {split: _scan(os.path.join(data_dir, split)) for split in ("train", "test")}
        # A class name in both splits gets one label (images split, not classes).
        names = found["train"][1] + found["test"][1]
        labels, _ = class_ids(names)
        n_train = len(found["train"][0])
        files = found["train"][0] + found["test"][0]
        everything = ImageSet(labels=labels, paths=files, name="folder",
                              extra={"class_names": np.array(names)})
        is_train = np.arange(len(files)) < n_train
    else:
        files, names = _scan(data_dir)
        train_names, _ = split_classes(sorted(set(names)), train_fraction, data_dir)
        labels, _ = class_ids(names)
        everything = ImageSet(labels=labels, paths=files, name="folder",
                              extra={"class_names": np.array(names)})
        is_train = np.array([n in train_names for n in names])
    train = everything.subset(is_train, name="folder/train")
    test = everything.subset(~is_train, name="folder/test")
    return DataSplits(train=train, test=test, protocol="default")


def _scan(folder: str) -> tuple[list[str], list[str]]:
    """(image files, their class names) of a folder of class folders."""
    classes = sorted(
        entry.name for entry in os.scandir(folder)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise DatasetError("the split has no classes: expected one subfolder per class", folder)
    files, names = [], []
    for name in classes:
        class_dir = os.path.join(folder, name)
        try:
            images = list_image_files(class_dir, what="class folder")
        except ValueError:
            raise DatasetError(f"class folder holds no images ({', '.join(IMAGE_EXTENSIONS)})", class_dir) from None
        files += images
        names += [name] * len(images)
    return files, names
