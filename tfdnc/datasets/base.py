"""Containers for image data sets: the one shape every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ImageSet:
    """A labelled set of images, held either as files or in memory.

    Exactly one of `paths` (image files, decoded on the fly) and `images`
    (uint8 array of shape (N, H, W, C)) is set.

    Attributes:
        labels: int64 class ids, shape (N,). Ids are those of the data set's
            own lists (not remapped), so results can be traced back.
        paths: image file paths, or None.
        images: in-memory uint8 images, or None.
        boxes: optional float (N, 4) crop boxes as (x, y, width, height) in
            pixels, applied before any transform (CUB/CARS bounding boxes).
        name: e.g. "cub/train".
        extra: per-image side information, e.g. {"super_labels": array}.
    """

    labels: np.ndarray
    paths: list[str] | None = None
    images: np.ndarray | None = None
    boxes: np.ndarray | None = None
    name: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if (self.paths is None) == (self.images is None):
            raise ValueError(f"ImageSet {self.name!r}: give exactly one of `paths` and `images`")
        n = len(self.paths) if self.paths is not None else len(self.images)
        if n != len(self.labels):
            raise ValueError(
                f"ImageSet {self.name!r}: {n} images but {len(self.labels)} labels"
            )
        if self.images is not None:
            if self.images.ndim != 4 or self.images.dtype != np.uint8:
                raise ValueError(
                    f"ImageSet {self.name!r}: `images` must be uint8 (N, H, W, C), "
                    f"got {self.images.dtype} {self.images.shape}"
                )
        if self.boxes is not None:
            self.boxes = np.asarray(self.boxes, dtype=np.float32)
            if self.boxes.shape != (n, 4):
                raise ValueError(
                    f"ImageSet {self.name!r}: `boxes` must have shape ({n}, 4), got {self.boxes.shape}"
                )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(np.unique(self.labels))

    def subset(self, index: np.ndarray, name: str | None = None) -> "ImageSet":
        """The images at `index` (integer indices or a boolean mask)."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return ImageSet(
            labels=self.labels[index],
            paths=[self.paths[i] for i in index] if self.paths is not None else None,
            images=self.images[index] if self.images is not None else None,
            boxes=self.boxes[index] if self.boxes is not None else None,
            name=name or self.name,
            extra={k: np.asarray(v)[index] for k, v in self.extra.items()},
        )


@dataclass(frozen=True)
class LeftOut:
    """A file or folder a loader left out of the data set, and why (validation lists it in skipped.txt).

    Attributes:
        split: "train", "test", ... when the loader knows it, else "data".
        path: the file or folder.
        class_name: its class folder, if any.
        reason: in words, e.g. "the same file as ... (reached again through a symbolic link)".
    """

    split: str
    path: str
    class_name: str
    reason: str


@dataclass
class DataSplits:
    """What a data set loader returns.

    Attributes:
        train: the training images.
        test: the evaluation images for all-vs-all retrieval (query excluded).
        query, gallery: set instead of / besides `test` for query-vs-gallery
            protocols (In-shop, VehicleID).
        protocol: evaluation protocol name ("cub", "cars", "sop", "inshop",
            "vehicleid", "default"), read by `tfdnc.evaluation`.
        extra_tests: further named query/gallery pairs (VehicleID's 800 /
            1,600 / 2,400 test sizes), name -> (query, gallery).
        left_out: files and folders the loader did not list (`LeftOut`),
            e.g. a second path to one file through a symbolic link.
    """

    train: ImageSet
    test: ImageSet | None = None
    query: ImageSet | None = None
    gallery: ImageSet | None = None
    protocol: str = "default"
    extra_tests: dict = field(default_factory=dict)
    left_out: list = field(default_factory=list)

    def __post_init__(self):
        if self.test is None and (self.query is None or self.gallery is None):
            raise ValueError("DataSplits: give `test`, or both `query` and `gallery`")
