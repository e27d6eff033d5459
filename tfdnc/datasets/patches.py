"""Patches: places in photographs, one class per place, from the photos scikit-learn and matplotlib ship.

`load_patches()` cuts the three photographs installed with tfdnc's own
dependencies (scikit-learn's `china.jpg` and `flower.jpg`, matplotlib's
`grace_hopper.jpg`) into a grid of `cell` x `cell` pixel places. A class
is a place; its images are crops around it as a hand-held camera would take
them again: shifted by up to `cell / 10` pixels, scaled by up to +-10 %,
rotated by up to +-10 degrees, with brightness, contrast, colour balance
and Gaussian pixel noise drawn anew, resized to `image_size`. Places whose
crop is nearly flat (sky, out-of-focus background: pixel standard
deviation below 0.08) are left out, since nothing tells them apart.
Retrieval of the same place among unseen places of natural photographs:
natural image statistics, unlike the drawn `shapes`, glyphs and textures.

The split is BY CLASS and by region: in every photograph the places in the
left `train_fraction` of its width train, those to the right test, so no
test pixel was seen in training. The class ids follow that split (train
classes first); the same seed gives the same arrays.

Examples:
    >>> splits = load_patches(images_per_class=2, seed=1)
    >>> splits.train.images.shape[1:]
    (32, 32, 3)
"""

from __future__ import annotations

import functools
import math

import numpy as np

from tfdnc.datasets.base import DataSplits
from tfdnc.datasets.generated import check_image_options, check_integer, finish_pixels, split_by_class

_MIN_STD = 0.08  # a place whose centred crop varies less than this (intensity in [0, 1]) is dropped


@functools.lru_cache(maxsize=None)
def photographs() -> tuple[np.ndarray, ...]:
    """The shipped photographs as float32 (H, W, 3) arrays in [0, 1]."""
    import matplotlib.cbook
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(image, np.float32) / 255.0 for image in load_sample_images().images]
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as image:
        photos.append(np.asarray(image.convert("RGB"), np.float32) / 255.0)
    return tuple(photos)


def _places(cell: int, train_fraction: float) -> tuple[list[tuple[int, float, float]], int]:
    """(photo, centre y, centre x) of every textured place, train places first; and their count."""
    margin = cell  # room for the shift, scale and rotation of a crop
    train, test = [], []
    for p, photo in enumerate(photographs()):
        height, width = photo.shape[:2]
        for cy in np.arange(margin, height - margin + 1, cell, dtype=float):
            for cx in np.arange(margin, width - margin + 1, cell, dtype=float):
                half = cell // 2
                crop = photo[int(cy) - half:int(cy) + half, int(cx) - half:int(cx) + half]
                if crop.std() < _MIN_STD:
                    continue
                (train if cx + half <= train_fraction * width else test if cx - half >= train_fraction * width
                 else []).append((p, cy, cx))  # places across the border belong to neither side
    return train + test, len(train)


def _crop(photo: np.ndarray, cy: float, cx: float, side: float, angle: float, out: int) -> np.ndarray:
    """A side x side crop centred at (cy, cx), rotated by `angle` radians, resampled to out x out (bilinear)."""
    t = (np.arange(out) + 0.5) / out - 0.5
    v, u = np.meshgrid(t * side, t * side, indexing="ij")
    cos, sin = math.cos(angle), math.sin(angle)
    y = np.clip(cy + sin * u + cos * v, 0, photo.shape[0] - 1.001)
    x = np.clip(cx + cos * u - sin * v, 0, photo.shape[1] - 1.001)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - y0)[..., None], (x - x0)[..., None]
    return ((photo[y0, x0] * (1 - fx) + photo[y0, x0 + 1] * fx) * (1 - fy)
            + (photo[y0 + 1, x0] * (1 - fx) + photo[y0 + 1, x0 + 1] * fx) * fy)


def load_patches(
    images_per_class: int = 12,
    cell: int = 40,
    image_size: int = 32,
    train_fraction: float = 0.5,
    noise: float = 0.02,
    seed: int = 0,
) -> DataSplits:
    """Cuts the patches benchmark (see the module docstring).

    Args:
        images_per_class: crops per place (>= 2).
        cell: the grid step and crop side in photo pixels (16-128); smaller
            cells give more, less distinct classes (40: about 400).
        image_size: side of the square RGB images in pixels (>= 16).
        train_fraction: the share of every photo's width (from the left)
            whose places train.
        noise: standard deviation of the Gaussian pixel noise (intensity in [0, 1]).
        seed: every crop's shift, scale, angle and colour changes.

    Returns:
        `DataSplits` with in-memory `train` ("patches/train") and `test`
        ("patches/test") sets, protocol "default".
    """
    source = "patches"
    check_integer(source, "cell", cell, 16, 128)
    check_image_options(source, images_per_class, image_size, train_fraction, noise, seed)
    places, n_train = _places(cell, train_fraction)
    num_classes = len(places)
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), images_per_class).astype(np.int64)
    n = len(labels)
    shift = rng.uniform(-0.1, 0.1, (n, 2)) * cell
    side = cell * np.exp(rng.uniform(-0.1, 0.1, n))
    angle = np.radians(rng.uniform(-10.0, 10.0, n))
    gain = np.exp(rng.normal(0, 0.05, (n, 3)))  # colour balance
    contrast, brightness = np.exp(rng.normal(0, 0.15, n)), rng.normal(0, 0.06, n)
    photos = photographs()
    pixels = np.empty((n, image_size, image_size, 3), np.float32)
    for i, label in enumerate(labels):
        p, cy, cx = places[label]
        crop = _crop(photos[p], cy + shift[i, 0], cx + shift[i, 1], side[i], angle[i], image_size) * gain[i]
        pixels[i] = (crop - crop.mean()) * contrast[i] + crop.mean() + brightness[i]
    # split_by_class keeps ids below round(num_classes * fraction) for training: pass the region split's share
    return split_by_class(source, finish_pixels(pixels, rng, noise), labels, num_classes, n_train / num_classes)
