"""CUB-200-2011 (Wah et al. 2011): 11,788 images of 200 bird species.

Expected layout (the `CUB_200_2011.tgz` archive, unpacked):

    CUB_200_2011/
        images.txt               <image_id> <relative path under images/>
        image_class_labels.txt   <image_id> <class_id 1..200>
        bounding_boxes.txt       <image_id> <x> <y> <width> <height>  (optional)
        images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg ...

The metric-learning split (Oh Song et al. 2016) ignores the data set's own
train_test_split.txt: classes 1-100 train, 101-200 test (5,864 / 5,924
images). Bounding boxes, when the file is there, are attached to every
image set; the input pipeline crops to them when the run asks for it
(`TrainConfig.use_boxes`).
"""

from __future__ import annotations

import os

import numpy as np

from tfdnc.datasets.base import DataSplits, ImageSet
from tfdnc.datasets.classsplit import split_by_class_id
from tfdnc.datasets.errors import DatasetError
from tfdnc.datasets.listfile import check_images_exist, check_unique, find_root, read_rows

NUM_CLASSES = 200


def load_cub(
    data_dir: str | None = None,
    num_train_classes: int = 100,
    use_boxes: bool = False,
    check_files: bool = True,
) -> DataSplits:
    """Loads CUB-200-2011 with classes 1..`num_train_classes` for training.

    Args:
        data_dir: the `CUB_200_2011` folder or the folder that holds it.
        num_train_classes: classes 1..n train, the rest test (100 in the papers).
        use_boxes: attach the boxes of `bounding_boxes.txt` (then required),
            which the input pipeline crops to.
        check_files: check that every listed image exists.

    Returns:
        `DataSplits(train, test, protocol="cub")`; labels are the class ids
        of `image_class_labels.txt` (1-based), `boxes` (x, y, w, h) with
        `use_boxes`.

    Examples:
        >>> splits = load_cub("/data/CUB_200_2011")  # doctest: +SKIP
        >>> len(splits.train), splits.train.num_classes   # (5864, 100)  # doctest: +SKIP
    """
    root = find_root(data_dir, "images.txt", ["CUB_200_2011"], "CUB-200-2011")
    labels_txt = os.path.join(root, "image_class_labels.txt")
    image_rows = read_rows(os.path.join(root, "images.txt"), ["image_id", "image_name"], what="CUB image list")
    ids = [r.int(0, "image_id") for r in image_rows]
    check_unique(ids, image_rows, "image id")
    files = [os.path.join(root, "images", r.fields[1]) for r in image_rows]
    labels = _read_labels(labels_txt, ids, image_rows)
    boxes = _read_boxes(os.path.join(root, "bounding_boxes.txt"), ids, image_rows) if use_boxes else None
    if check_files:
        check_images_exist(files, image_rows)
    everything = ImageSet(labels=labels, paths=files, boxes=boxes, name="cub",
                          extra={"image_ids": np.array(ids, dtype=np.int64)})
    return split_by_class_id(everything, num_train_classes, NUM_CLASSES, "CUB", labels_txt)


def _read_labels(labels_txt: str, ids: list[int], image_rows: list) -> np.ndarray:
    """The class id (1..200) of every image id, in `ids` order, from image_class_labels.txt."""
    labels_by_id = {}
    for row in read_rows(labels_txt, ["image_id", "class_id"], what="CUB class label list"):
        image_id, label = row.int(0, "image_id"), row.int(1, "class_id")
        if not 1 <= label <= NUM_CLASSES:
            raise DatasetError(f"class_id must be in 1..{NUM_CLASSES}, got {label}", row.path, row.line)
        labels_by_id[image_id] = label
    missing = [(i, r) for i, r in zip(ids, image_rows) if i not in labels_by_id]
    if missing:
        image_id, row = missing[0]
        raise DatasetError(
            f"image id {image_id} has no class in {labels_txt} ({len(missing)} such images)",
            row.path, row.line,
        )
    return np.array([labels_by_id[i] for i in ids], dtype=np.int64)


def _read_boxes(boxes_txt: str, ids: list[int], image_rows: list) -> np.ndarray:
    """(N, 4) float32 boxes (x, y, width, height) of every image id, in `ids` order, from bounding_boxes.txt."""
    boxes_by_id = {}
    for row in read_rows(boxes_txt, ["image_id", "x", "y", "width", "height"], what="CUB box list"):
        box = [row.float(k, name) for k, name in zip(range(1, 5), ("x", "y", "width", "height"))]
        if box[2] <= 0 or box[3] <= 0:
            raise DatasetError(f"box width and height must be > 0, got {box[2:]}", row.path, row.line)
        boxes_by_id[row.int(0, "image_id")] = box
    absent = [(i, r) for i, r in zip(ids, image_rows) if i not in boxes_by_id]
    if absent:
        raise DatasetError(f"image id {absent[0][0]} has no box in {boxes_txt}",
                           absent[0][1].path, absent[0][1].line)
    return np.array([boxes_by_id[i] for i in ids], dtype=np.float32)
