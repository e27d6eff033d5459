"""Images to index and the model that embeds them.

Images come from folders (labels: the class subfolder), CSV files (columns
`path` and optional `label`; relative paths are relative to the CSV), or
single files. The model is an export version, BASE/NAME (latest version) or a
run directory with RUN_DIR/export inside, run in-process, or any
`tfdnc.serving` client (TF Serving over REST or gRPC).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from tfdnc.exporting import contract
from tfdnc.utils import is_image_file, list_image_files


@dataclass
class ImageList:
    """Image file paths with a label each (None when unknown)."""

    paths: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def extend(self, other: "ImageList") -> None:
        self.paths.extend(other.paths)
        self.labels.extend(other.labels)

    @property
    def labelled(self) -> bool:
        return bool(self.labels) and all(label is not None for label in self.labels)


def images_from_folder(folder: str) -> ImageList:
    """Every image under `folder`; its label is its subfolder relative to `folder` (None at the top)."""
    paths = list_image_files(folder, what="image folder")
    labels = []
    for path in paths:
        parent = os.path.relpath(os.path.dirname(path), folder)
        labels.append(None if parent == "." else parent.replace(os.sep, "/"))
    return ImageList(paths, labels)


def images_from_csv(path: str) -> ImageList:
    """Rows of a CSV with a `path` column (and optionally `label`)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read image list {path!r}: {exc}") from exc
    if not rows or "path" not in rows[0]:
        raise ValueError(f"image list {path!r} needs a header with a `path` column (and optionally `label`)")
    root = os.path.dirname(os.path.abspath(path))
    images = ImageList()
    for line, row in enumerate(rows, start=2):
        if not row["path"]:
            raise ValueError(f"image list {path!r}, line {line}: empty path")
        images.paths.append(row["path"] if os.path.isabs(row["path"]) else os.path.join(root, row["path"]))
        label = (row.get("label") or "").strip()
        images.labels.append(label or None)
    return images


def collect_images(items: Sequence[str]) -> ImageList:
    """Folders, CSV files and image files -> one `ImageList`, in the order given."""
    images = ImageList()
    for item in items:
        if os.path.isdir(item):
            images.extend(images_from_folder(item))
        elif item.lower().endswith(".csv"):
            images.extend(images_from_csv(item))
        elif os.path.isfile(item) and is_image_file(item):
            images.extend(ImageList([item], [None]))
        else:
            raise FileNotFoundError(f"{item!r} is neither an image folder, a CSV image list nor an image file")
    if not len(images):
        raise ValueError(f"no images in {list(items)}")
    return images


def embed_images(model, paths: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """(N, d) embeddings of image files through `model` (any `tfdnc.serving` client).

    A batch the model refuses is retried image by image, so the error names
    the file that could not be decoded.
    """
    from tfdnc.serving.files import embed_files  # the batching and per-file error naming `tfdnc embed` uses

    entries = [(path, path) for path in paths]
    return embed_files(model, entries, contract.SERVING_DEFAULT, contract.EMBEDDINGS, batch_size)


def load_exported_model(export: str):
    """The export (version folder, BASE/NAME, or run directory) loaded in-process."""
    from tfdnc.index.store import resolve_export
    from tfdnc.serving.local import ExportedModel

    return ExportedModel(resolve_export(export))
