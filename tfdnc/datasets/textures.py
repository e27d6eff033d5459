"""Textures: procedural colour textures, one class per random texture recipe (no download).

`load_textures()` draws a recipe per class and renders every image of the
class from it with fresh randomness. A recipe is

- two sinusoidal gratings (orientations at least 30 degrees apart, 2-8
  cycles per image, the second at 30-100 % of the first's amplitude),
- a band of filtered noise (centre frequency 3-10 cycles per image, an
  orientation and how strongly the band prefers it),
- a contrast curve (`tanh` gain 0.7-5: soft waves to hard-edged patterns),
- a palette of two colours the curve blends between.

Within a class the gratings' phases and the noise are new in every image,
orientations jitter by about 4 degrees, frequencies by about 5 %, the hues
by about 0.03 of the wheel; brightness, contrast and Gaussian pixel noise
vary too. The images fill the frame (no object, no background): retrieval
by spectrum and colour, the statistics of texture benchmarks, unlike
`shapes`' objects on backgrounds or the glyphs' strokes. Classes are split
BY CLASS (`tfdnc.datasets.generated.split_by_class`); the same seed gives
the same arrays.

Examples:
    >>> splits = load_textures(num_classes=20, images_per_class=3, seed=1)
    >>> splits.test.images.shape
    (30, 32, 32, 3)
"""

from __future__ import annotations

import math

import numpy as np

from tfdnc.datasets.base import DataSplits
from tfdnc.datasets.generated import check_image_options, check_integer, finish_pixels, split_by_class

_CHUNK = 512  # images rendered at once (bounds the memory of the float maps)


def _recipes(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    """One row per class."""
    theta1 = rng.uniform(0, math.pi, count)
    return {
        "theta": np.stack([theta1, theta1 + rng.uniform(math.pi / 6, 5 * math.pi / 6, count)], -1),
        "freq": rng.uniform(2.0, 8.0, (count, 2)),
        "amp2": rng.uniform(0.3, 1.0, count),
        "noise_freq": rng.uniform(3.0, 10.0, count),
        "noise_theta": rng.uniform(0, math.pi, count),
        "noise_kappa": rng.uniform(0.0, 3.0, count),
        "noise_amp": rng.uniform(0.2, 1.0, count),
        "gain": np.exp(rng.uniform(math.log(0.7), math.log(5.0), count)),
        "hue": rng.random((count, 2)),
        "sat": rng.uniform(0.2, 0.9, (count, 2)),
        "val": np.sort(rng.uniform(0.1, 1.0, (count, 2)), axis=1),  # one darker, one lighter colour
    }


def _render(recipe: dict[str, np.ndarray], rng: np.random.Generator, size: int) -> np.ndarray:
    """Float images (n, size, size, 3) in [0, 1] for per-image recipe rows."""
    from matplotlib.colors import hsv_to_rgb

    n = len(recipe["gain"])
    grid = np.arange(size) / size
    y, x = np.meshgrid(grid, grid, indexing="ij")
    theta = recipe["theta"] + rng.normal(0, math.radians(4), (n, 2))
    freq = recipe["freq"] * np.exp(rng.normal(0, 0.05, (n, 2)))
    phase = rng.uniform(0, 2 * math.pi, (n, 2))
    field = np.zeros((n, size, size))
    for j, amp in enumerate((np.ones(n), recipe["amp2"])):
        arg = freq[:, j, None, None] * (np.cos(theta[:, j])[:, None, None] * x + np.sin(theta[:, j])[:, None, None] * y)
        field += amp[:, None, None] * np.cos(2 * math.pi * arg + phase[:, j, None, None])
    # the noise band: white noise filtered around a radius and an orientation in the FFT plane
    fy, fx = np.meshgrid(np.fft.fftfreq(size) * size, np.fft.fftfreq(size) * size, indexing="ij")
    radius, angle = np.hypot(fx, fy), np.arctan2(fy, fx)
    centre = (recipe["noise_freq"] * np.exp(rng.normal(0, 0.05, n)))[:, None, None]
    noise_theta = (recipe["noise_theta"] + rng.normal(0, math.radians(4), n))[:, None, None]
    band = np.exp(-0.5 * (np.log((radius + 1e-6) / centre) / 0.25) ** 2)
    band *= np.exp(recipe["noise_kappa"][:, None, None] * (np.cos(2 * (angle - noise_theta)) - 1))
    noise = np.fft.ifft2(np.fft.fft2(rng.normal(0, 1, (n, size, size))) * band).real
    noise /= noise.std(axis=(1, 2), keepdims=True) + 1e-8
    field += recipe["noise_amp"][:, None, None] * noise
    field /= field.std(axis=(1, 2), keepdims=True) + 1e-8
    blend = (np.tanh(recipe["gain"][:, None, None] * field) + 1) / 2
    hue = recipe["hue"] + rng.normal(0, 0.03, (n, 2))
    colours = hsv_to_rgb(np.stack([np.mod(hue, 1.0), recipe["sat"], recipe["val"]], -1))  # (n, 2, 3)
    pixels = colours[:, None, None, 0] * (1 - blend[..., None]) + colours[:, None, None, 1] * blend[..., None]
    contrast = np.exp(rng.normal(0, 0.1, n))[:, None, None, None]
    return (pixels - 0.5) * contrast + 0.5 + rng.normal(0, 0.04, n)[:, None, None, None]


def load_textures(
    num_classes: int = 400,
    images_per_class: int = 12,
    image_size: int = 32,
    train_fraction: float = 0.5,
    noise: float = 0.03,
    seed: int = 0,
) -> DataSplits:
    """Renders the textures benchmark (see the module docstring).

    Args:
        num_classes: texture recipes in all, train and test together (>= 4).
        images_per_class: images per recipe (>= 2).
        image_size: side of the square RGB images in pixels (>= 16).
        train_fraction: the share of the classes that train.
        noise: standard deviation of the Gaussian pixel noise (intensity in [0, 1]).
        seed: the recipes and every image's randomness; the same seed gives
            the same arrays.

    Returns:
        `DataSplits` with in-memory `train` ("textures/train") and `test`
        ("textures/test") sets, protocol "default".
    """
    source = "textures"
    check_integer(source, "num_classes", num_classes, 4)
    check_image_options(source, images_per_class, image_size, train_fraction, noise, seed)
    class_seq, image_seq = np.random.SeedSequence(seed).spawn(2)
    recipes = _recipes(np.random.default_rng(class_seq), num_classes)
    rng = np.random.default_rng(image_seq)
    labels = np.repeat(np.arange(num_classes), images_per_class).astype(np.int64)
    images = np.empty((len(labels), image_size, image_size, 3), np.uint8)
    for start in range(0, len(labels), _CHUNK):
        rows = labels[start:start + _CHUNK]
        pixels = _render({k: v[rows] for k, v in recipes.items()}, rng, image_size)
        images[start:start + len(rows)] = finish_pixels(pixels, rng, noise)
    return split_by_class(source, images, labels, num_classes, train_fraction)
