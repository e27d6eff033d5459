"""Disjoint class splits for data sets that do not define their own."""

from __future__ import annotations

import numpy as np

from tfdnc.datasets.errors import DatasetError


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
