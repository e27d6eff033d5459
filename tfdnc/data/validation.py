"""Checks of a training set before a long run: unreadable images, lone classes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from tfdnc.datasets.base import ImageSet


@dataclass
class ValidationReport:
    """What `validate_training_set` removed, and why."""

    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    lone_classes: list[int] = field(default_factory=list)  # classes with < 2 images

    @property
    def removed(self) -> int:
        return len(self.unreadable)

    def lines(self) -> list[str]:
        out = [f"unreadable image skipped: {path} ({reason})" for path, reason in self.unreadable]
        out += [f"class {c} has fewer than 2 images (no positive pair); its images are skipped"
                for c in self.lone_classes]
        return out


class InvalidImageError(ValueError):
    """An image file cannot be decoded (raised in strict mode)."""


def _check_file(path: str) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()  # verify() skips pixel data; truncated files fail here
        return None
    except Exception as exc:  # noqa: BLE001 - any failure makes the file unusable
        return f"{type(exc).__name__}: {exc}"


def validate_training_set(image_set: ImageSet, strict: bool = False, workers: int = 8) -> tuple[ImageSet, ValidationReport]:
    """Drops unreadable image files and classes with a single image.

    A run of hundreds of epochs should not die on the one corrupt JPEG among
    100,000, so by default bad files are skipped and reported (the caller
    writes the report into the run directory); `strict=True` raises
    `InvalidImageError` naming the first bad file instead.

    Returns:
        The cleaned image set and the report.
    """
    report = ValidationReport()
    keep = np.ones(len(image_set), bool)
    if image_set.paths is not None:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            problems = list(pool.map(_check_file, image_set.paths))
        for i, problem in enumerate(problems):
            if problem is not None:
                if strict:
                    raise InvalidImageError(f"cannot decode image {image_set.paths[i]!r}: {problem}")
                report.unreadable.append((image_set.paths[i], problem))
                keep[i] = False
    labels, counts = np.unique(image_set.labels[keep], return_counts=True)
    lone = labels[counts < 2]
    if len(lone):
        report.lone_classes = [int(c) for c in lone]
        keep &= ~np.isin(image_set.labels, lone)
    if not keep.any():
        raise ValueError(f"{image_set.name or 'training set'}: no usable images left after validation")
    return (image_set if keep.all() else image_set.subset(keep)), report
