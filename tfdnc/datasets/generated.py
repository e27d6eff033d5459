"""What the generated benchmark sets share: option checks (shapes too) and the class split (glyphs, textures, patches).

Each generator draws its classes in a seeded order and keeps the first
`round(num_classes * train_fraction)` of them for training, the rest for
testing, so no class is in both splits (as the metric-learning benchmarks).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from tfdnc.datasets.base import DataSplits, ImageSet


def check_integer(source: str, name: str, value, low: int, high: int | None = None) -> None:
    """Raises ValueError naming the data set and option unless `low <= value (<= high)` is an integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{source}: `{name}` must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{source}: `{name}` must be {bound}, got {value}")


def check_fraction(source: str, name: str, value, low: float = 0.0, high: float = 1.0) -> None:
    """Raises ValueError unless `value` is a finite number in the open interval (low, high)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{source}: `{name}` must be a finite number, got {value!r}")
    if not low < value < high:
        raise ValueError(f"{source}: `{name}` must be in ({low}, {high}), got {value}")


def check_image_options(source: str, images_per_class, image_size, train_fraction, noise, seed) -> None:
    """The options every generated set takes: >= 2 images per class, >= 16 pixels, a fraction, a noise level, a seed."""
    check_integer(source, "images_per_class", images_per_class, 2)
    check_integer(source, "image_size", image_size, 16)
    check_integer(source, "seed", seed, 0)
    check_fraction(source, "train_fraction", train_fraction)
    check_fraction(source, "noise", noise, -1e-12, 1.0)


def split_by_class(source: str, images: np.ndarray, labels: np.ndarray, num_classes: int,
                   train_fraction: float) -> DataSplits:
    """Classes `0 .. round(num_classes * train_fraction) - 1` train, the others test (protocol "default")."""
    n_train = int(round(num_classes * train_fraction))
    if not 2 <= n_train <= num_classes - 2:
        raise ValueError(f"{source}: `train_fraction` {train_fraction} of {num_classes} classes leaves "
                         f"{n_train} train and {num_classes - n_train} test classes; each split needs at least 2")
    is_train = labels < n_train
    return DataSplits(
        train=ImageSet(labels=labels[is_train], images=images[is_train], name=f"{source}/train"),
        test=ImageSet(labels=labels[~is_train], images=images[~is_train], name=f"{source}/test"),
        protocol="default",
    )


def finish_pixels(pixels: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Float images in [0, 1] (N, H, W, 3) plus Gaussian pixel noise, as uint8."""
    if noise:
        pixels = pixels + rng.normal(0.0, noise, pixels.shape)
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
