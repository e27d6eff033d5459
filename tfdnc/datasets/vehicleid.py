"""PKU VehicleID (Liu et al. 2016): 221,763 images of 26,267 vehicles.

Expected layout (`VehicleID_V1.0`, as distributed)::

    VehicleID_V1.0/
        image/0001163.jpg ...
        train_test_split/train_list.txt      <image name> <vehicle id>
        train_test_split/test_list_800.txt   (small)
        train_test_split/test_list_1600.txt  (medium)
        train_test_split/test_list_2400.txt  (large)

Training uses `train_list.txt` (110,178 images, 13,164 vehicles). Each test
list is split into query and gallery as in the literature (Liu et al. 2016;
HDC; the CVPR 2019 paper): for every vehicle, one image chosen at random goes
to the gallery, all its other images are queries. The choice is seeded, so
the split is the same from run to run.
"""

from __future__ import annotations

import os

import numpy as np

from tfdnc.datasets.base import DataSplits, ImageSet
from tfdnc.datasets.listfile import check_images_exist, find_root, read_rows, require_classes

TEST_SIZES = (800, 1600, 2400)
_COLUMNS = ("image_name", "vehicle_id")


def load_vehicleid(
    data_dir: str | None = None,
    test_sizes: tuple[int, ...] = TEST_SIZES,
    main_test: int = 2400,
    seed: int = 0,
    check_files: bool = True,
) -> DataSplits:
    """Loads PKU VehicleID with seeded query / gallery splits per test size.

    Args:
        data_dir: the `VehicleID_V1.0` folder or the folder holding it.
        test_sizes: which `test_list_<n>.txt` to load.
        main_test: the size whose query / gallery become `query` / `gallery`
            (the one evaluated during training); the papers headline 2,400.
        seed: seeds the choice of each vehicle's gallery image.
        check_files: check that every listed image exists.

    Returns:
        `DataSplits(train, query, gallery, protocol="vehicleid",
        extra_tests={"800": (query, gallery), "1600": ..., "2400": ...})`.

    Examples:
        >>> splits = load_vehicleid("/data/VehicleID_V1.0")  # doctest: +SKIP
        >>> query, gallery = splits.extra_tests["800"]  # doctest: +SKIP
        >>> gallery.num_classes == len(gallery)   # one image per vehicle: True  # doctest: +SKIP
    """
    if main_test not in test_sizes:
        raise ValueError(f"load_vehicleid: `main_test` ({main_test}) must be one of `test_sizes` {test_sizes}")
    root = find_root(data_dir, "train_test_split", ["VehicleID_V1.0"], "PKU VehicleID")
    lists = os.path.join(root, "train_test_split")
    train = _read_list(root, os.path.join(lists, "train_list.txt"), "train", check_files)
    extra_tests = {}
    for size in test_sizes:
        path = os.path.join(lists, f"test_list_{size}.txt")
        test = _read_list(root, path, f"test_{size}", check_files)
        extra_tests[str(size)] = query_gallery_split(test, seed=seed, name=f"vehicleid/test_{size}")
    query, gallery = extra_tests[str(main_test)]
    return DataSplits(train=train, query=query, gallery=gallery, protocol="vehicleid",
                      extra_tests=extra_tests)


def query_gallery_split(images: ImageSet, seed: int = 0, name: str | None = None) -> tuple[ImageSet, ImageSet]:
    """One random image per class to the gallery, the rest to the query set.

    Classes with a single image contribute a gallery image (a distractor)
    and no query.
    """
    rng = np.random.default_rng(seed)
    order = np.argsort(images.labels, kind="stable")
    classes, starts = np.unique(images.labels[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    gallery = np.array([order[rng.integers(s, e)] for s, e in zip(starts, ends)], dtype=np.int64)
    is_gallery = np.zeros(len(images), dtype=bool)
    is_gallery[gallery] = True
    name = name or images.name
    return (images.subset(~is_gallery, name=f"{name}/query"),
            images.subset(is_gallery, name=f"{name}/gallery"))


def _read_list(root: str, path: str, split: str, check_files: bool) -> ImageSet:
    rows = read_rows(path, _COLUMNS, what=f"VehicleID {split} list")
    labels = np.array([r.int(1, "vehicle_id") for r in rows], dtype=np.int64)
    files = []
    for row in rows:
        name = row.fields[0]
        # The lists name images without extension; tolerate lists that add it.
        files.append(os.path.join(root, "image", name if os.path.splitext(name)[1] else f"{name}.jpg"))
    if check_files:
        check_images_exist(files, rows)
    require_classes(labels, split, path)
    return ImageSet(labels=labels, paths=files, name=f"vehicleid/{split}")
