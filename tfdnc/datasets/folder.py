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

Symbolic links are followed once per real file: a class folder or an image
may be a link, but a file reached twice (through two class folders, or a
link beside its target) is kept once, under the path that comes first
(train before test, then by class name and path); the others, and a class
folder that links to the data folder itself or above it (`ln -s . DATA/x`),
are left out and named in `DataSplits.left_out` (validation lists them in
skipped.txt). Links to folders inside a class folder are not entered, so a
link loop cannot recur.
"""

from __future__ import annotations

import os

import numpy as np

from tfdnc.datasets.base import DataSplits, ImageSet, LeftOut
from tfdnc.datasets.classsplit import class_ids, split_classes
from tfdnc.datasets.errors import DatasetError
from tfdnc.datasets.listfile import require_dir
from tfdnc.utils import IMAGE_EXTENSIONS, list_image_files


def load_image_folder(data_dir: str | None = None, train_fraction: float = 0.5) -> DataSplits:
    """Loads a folder-per-class image collection.

    Args:
        data_dir: the root folder (see the module docstring for layouts).
        train_fraction: share of the classes that train when the root has no
            `train/` and `test/` subfolders.

    Returns:
        `DataSplits(train, test, protocol="default")`.

    Examples:
        >>> splits = load_image_folder("photos")
        >>> sorted(set(splits.test.extra["class_names"].tolist()))[:2]
        ['class_4', 'class_5']
    """
    require_dir(data_dir, "image-folder")
    has_split = os.path.isdir(os.path.join(data_dir, "train")) and os.path.isdir(os.path.join(data_dir, "test"))
    seen: dict[str, str] = {}  # real path -> the path it is listed under, across every class and split
    left_out: list[LeftOut] = []
    if has_split:
        found = {split: _scan(os.path.join(data_dir, split), seen, left_out, split) for split in ("train", "test")}
        # A class name in both splits gets one label (images split, not classes).
        names = found["train"][1] + found["test"][1]
        labels, _ = class_ids(names)
        n_train = len(found["train"][0])
        files = found["train"][0] + found["test"][0]
        everything = ImageSet(labels=labels, paths=files, name="folder",
                              extra={"class_names": np.array(names)})
        is_train = np.arange(len(files)) < n_train
    else:
        files, names = _scan(data_dir, seen, left_out, "data")
        train_names, _ = split_classes(sorted(set(names)), train_fraction, data_dir)
        labels, _ = class_ids(names)
        everything = ImageSet(labels=labels, paths=files, name="folder",
                              extra={"class_names": np.array(names)})
        is_train = np.array([n in train_names for n in names])
    train = everything.subset(is_train, name="folder/train")
    test = everything.subset(~is_train, name="folder/test")
    return DataSplits(train=train, test=test, protocol="default", left_out=left_out)


def _scan(folder: str, seen: dict[str, str], left_out: list[LeftOut], split: str) -> tuple[list[str], list[str]]:
    """(image files, their class names) of a folder of class folders; each real file once (see `seen`)."""
    classes = sorted(
        entry.name for entry in os.scandir(folder)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise DatasetError("the split has no classes: expected one subfolder per class", folder)
    above = _folder_and_above(folder)
    files, names = [], []
    for name in classes:
        class_dir = os.path.join(folder, name)
        if os.path.realpath(class_dir) in above:
            # `ln -s . DATA/x`: every image again, as one more class (or, with `..`, the whole tree).
            left_out.append(LeftOut(split, class_dir, name, f"a symbolic link to {os.path.realpath(class_dir)}, "
                                    "the data folder itself or a folder above it, not a class; not read"))
            continue
        skipped: list[tuple[str, str]] = []
        try:
            images = list_image_files(class_dir, what="class folder", skipped=skipped, seen=seen)
        except ValueError:
            raise DatasetError(f"class folder holds no images ({', '.join(IMAGE_EXTENSIONS)})", class_dir) from None
        left_out += [LeftOut(split, path, name, reason) for path, reason in skipped]
        if not images:
            left_out.append(LeftOut(split, class_dir, name, "every image of this class folder is listed under "
                                    "another class folder already (symbolic links); the class is left out"))
        files += images
        names += [name] * len(images)
    return files, names


def _folder_and_above(folder: str) -> set[str]:
    """The real path of `folder` and of every folder above it."""
    path, out = os.path.realpath(folder), set()
    while path not in out:
        out.add(path)
        path = os.path.dirname(path)
    return out
