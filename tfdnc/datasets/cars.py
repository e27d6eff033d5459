"""CARS196 (Krause et al. 2013): 16,185 images of 196 car models.

Two layouts are read, both as Stanford distributes them:

1. The all-in-one archive (`car_ims.tgz` + `cars_annos.mat`)::

       cars196/
           cars_annos.mat   annotations(relative_im_path, bbox_x1, bbox_y1,
                            bbox_x2, bbox_y2, class, test), class_names
           car_ims/000001.jpg ...

2. The devkit layout::

       cars196/
           devkit/cars_train_annos.mat  annotations(bbox_x1..bbox_y2, class, fname)
           devkit/cars_test_annos.mat   the same; the devkit's own copy has no
                                        `class`: put `cars_test_annos_withlabels.mat`
                                        (released later) in `devkit/` or the root
           devkit/cars_meta.mat         class_names
           cars_train/00001.jpg ...
           cars_test/00001.jpg ...

The metric-learning split ignores the data set's train/test flag: classes
1-98 train and 99-196 test (8,054 / 8,131 images). MATLAB boxes (x1, y1, x2,
y2, 1-based, inclusive) become (x, y, width, height) in 0-based pixels.
"""

from __future__ import annotations

import os

import numpy as np

from tfdnc.datasets.base import DataSplits, ImageSet
from tfdnc.datasets.classsplit import split_by_class_id
from tfdnc.datasets.errors import DatasetError
from tfdnc.datasets.listfile import find_root, require_dir

NUM_CLASSES = 196
_BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")


def load_cars(
    data_dir: str | None = None,
    num_train_classes: int = 98,
    use_boxes: bool = False,
    check_files: bool = True,
) -> DataSplits:
    """Loads CARS196 with classes 1..`num_train_classes` for training.

    Args:
        data_dir: the folder holding `cars_annos.mat` (or `devkit/`), or its
            parent if it is named `cars196`, `stanford_cars` or `CARS196`.
        num_train_classes: classes 1..n train, the rest test (98 in the papers).
        use_boxes: attach the bounding boxes, which the input pipeline crops to.
        check_files: check that every annotated image exists.

    Returns:
        `DataSplits(train, test, protocol="cars")` with 1-based class ids as
        labels, and bounding boxes as `boxes` with `use_boxes`.

    Examples:
        >>> splits = load_cars("/data/cars196")  # doctest: +SKIP
        >>> splits.train.num_classes, splits.test.num_classes   # (98, 98)  # doctest: +SKIP
    """
    records = _read_records(data_dir)
    files = [file for file, _, _, _ in records]
    if check_files:
        for file, _, _, (path, item) in records:
            if not os.path.isfile(file):
                raise DatasetError(f"image listed but absent: {file}", path, item=item)
    labels = np.array([label for _, label, _, _ in records], dtype=np.int64)
    boxes = np.array([box for _, _, box, _ in records], np.float32) if use_boxes else None
    everything = ImageSet(labels=labels, paths=files, name="cars", boxes=boxes)
    return split_by_class_id(everything, num_train_classes, NUM_CLASSES, "CARS196", records[0][3][0])


def _read_records(data_dir: str | None) -> list[tuple]:
    """(file, class, box, (annotation file, item)) per image, from either layout (see the module's docstring)."""
    subfolders = ["cars196", "CARS196", "stanford_cars", "cars"]
    require_dir(data_dir, "CARS196")
    try:
        root = find_root(data_dir, "cars_annos.mat", subfolders, "CARS196")
        read_records = _records_all_in_one
    except DatasetError as missing_all_in_one:
        try:
            root = find_root(data_dir, "devkit", subfolders, "CARS196")
        except DatasetError:
            raise DatasetError(
                "neither cars_annos.mat nor devkit/ found here: is this CARS196 as distributed?",
                data_dir,
            ) from missing_all_in_one
        read_records = _records_devkit
    return list(read_records(root))


def _records_all_in_one(root: str):
    path = os.path.join(root, "cars_annos.mat")
    for index, record in enumerate(_annotations(path, ("relative_im_path", "class") + _BOX_FIELDS)):
        item = f"annotation {index + 1}"
        file = os.path.join(root, str(record["relative_im_path"]))
        yield file, _class(record, path, item), _box(record, path, item), (path, item)


def _records_devkit(root: str):
    devkit = os.path.join(root, "devkit")
    found = False
    for split, candidates in (
        ("train", ["cars_train_annos.mat"]),
        ("test", ["cars_test_annos_withlabels.mat", "cars_test_annos.mat"]),
    ):
        paths = [os.path.join(folder, name) for name in candidates for folder in (devkit, root)]
        path = next((p for p in paths if os.path.isfile(p)), None)
        if path is None:
            raise DatasetError(f"cars_{split}_annos.mat not found (looked for {', '.join(paths)})", devkit)
        records = _annotations(path, ("fname",) + _BOX_FIELDS)
        if records and "class" not in records[0]:
            raise DatasetError(
                "these annotations carry no `class` (the devkit's test annotations are "
                "unlabelled): add cars_test_annos_withlabels.mat to devkit/",
                path,
            )
        for index, record in enumerate(records):
            found = True
            item = f"annotation {index + 1}"
            file = os.path.join(root, f"cars_{split}", str(record["fname"]))
            yield file, _class(record, path, item), _box(record, path, item), (path, item)
    if not found:
        raise DatasetError("no annotations in the devkit", devkit)


def _annotations(path: str, required: tuple[str, ...]) -> list[dict]:
    """The `annotations` struct array of a devkit .mat file as a list of dicts."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as exc:  # scipy raises several types for corrupt files
        raise DatasetError(f"cannot read MATLAB file: {exc}", path) from exc
    if "annotations" not in mat:
        raise DatasetError("no `annotations` variable in this MATLAB file", path)
    entries = np.atleast_1d(mat["annotations"])
    records = []
    for index, entry in enumerate(entries):
        fields = getattr(entry, "_fieldnames", None)
        if fields is None:
            raise DatasetError("`annotations` is not a struct array", path)
        missing = [f for f in required if f not in fields]
        if missing:
            raise DatasetError(f"annotation lacks field(s) {missing}", path, item=f"annotation {index + 1}")
        records.append({f: getattr(entry, f) for f in fields})
    if not records:
        raise DatasetError("`annotations` is empty", path)
    return records


def _class(record: dict, path: str, item: str) -> int:
    try:
        label = int(np.asarray(record["class"]).reshape(()))
    except (TypeError, ValueError):
        raise DatasetError(f"class must be one integer, got {record['class']!r}", path, item=item) from None
    if not 1 <= label <= NUM_CLASSES:
        raise DatasetError(f"class must be in 1..{NUM_CLASSES}, got {label}", path, item=item)
    return label


def _box(record: dict, path: str, item: str) -> list[float]:
    try:
        x1, y1, x2, y2 = (float(np.asarray(record[f]).reshape(())) for f in _BOX_FIELDS)
    except (TypeError, ValueError):
        raise DatasetError("bbox_x1..bbox_y2 must be single numbers", path, item=item) from None
    if x2 < x1 or y2 < y1:
        raise DatasetError(f"box ({x1}, {y1}, {x2}, {y2}) has x2 < x1 or y2 < y1", path, item=item)
    return [x1 - 1.0, y1 - 1.0, x2 - x1 + 1.0, y2 - y1 + 1.0]
