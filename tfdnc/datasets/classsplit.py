"""Disjoint class splits: by class id for CUB / CARS196, by sorted name for data sets that define none."""

from __future__ import annotations

import numpy as np

from tfdnc.datasets.base import DataSplits, ImageSet
from tfdnc.datasets.errors import DatasetError
from tfdnc.datasets.listfile import require_classes


def split_by_class_id(everything: ImageSet, num_train_classes: int, num_classes: int, dataset: str,
                      source: str) -> DataSplits:
    """Classes 1..`num_train_classes` train, the rest test (the metric-learning split of CUB and CARS196).

    `everything.name` names the splits ("cub" -> "cub/train", "cub/test") and
    their protocol; an empty split is a `DatasetError` naming `source`.
    """
    name = everything.name
    is_train = everything.labels <= num_train_classes
    train = everything.subset(is_train, name=f"{name}/train")
    test = everything.subset(~is_train, name=f"{name}/test")
    hint = f"{dataset} trains on classes 1-{num_train_classes} and tests on {num_train_classes + 1}-{num_classes}"
    require_classes(train.labels, "train", source, hint)
    require_classes(test.labels, "test", source, hint)
    return DataSplits(train=train, test=test, protocol=name)


def split_classes(class_names: list[str], train_fraction: float, source: str) -> tuple[set, set]:
    """The first `train_fraction` of the (sorted) class names train, the rest test.

    As in the metric-learning benchmarks, train and test classes are disjoint,
    so the test measures generalisation to unseen classes.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"`train_fraction` must be in (0, 1), got {train_fraction}")
    names = sorted(class_names)
    if len(names) < 2:
        raise DatasetError(
            f"found {len(names)} class(es); a train / test class split needs at least 2", source
        )
    cut = int(round(len(names) * train_fraction))
    cut = min(max(cut, 1), len(names) - 1)
    return set(names[:cut]), set(names[cut:])


def class_ids(names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Integer labels for class names: their index in the sorted unique names."""
    vocabulary = sorted(set(names))
    index = {name: i for i, name in enumerate(vocabulary)}
    return np.array([index[n] for n in names], dtype=np.int64), vocabulary
