"""Image files as request payloads: folder listing and reading bytes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Union

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")

ImageLike = Union[bytes, bytearray, str, os.PathLike]


def list_images(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """All image files under `folder` (recursively), sorted.

    Returns (id, path) pairs; the id is the path relative to `folder` with
    '/' separators, which is what the CLI and gallery exports report.

    Example:
    >>> [image_id for image_id, _ in list_images("gallery")]  # ['cat/1.jpg', ...]
    """
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {str(root)!r} does not exist or is not a directory")
    found = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not found:
        raise ValueError(
            f"image folder {str(root)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
        )
    return [(p.relative_to(root).as_posix(), str(p)) for p in found]


def read_image_bytes(image: ImageLike) -> bytes:
    """Bytes pass through; a path is read (with an error naming the file)."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        try:
            with open(image, "rb") as f:
                return f.read()
        except OSError as exc:
            raise FileNotFoundError(f"cannot read image file {os.fspath(image)!r}: {exc}") from exc
    raise TypeError(
        f"an image must be encoded bytes or a file path, got {type(image).__name__}"
    )


def as_image_list(images: ImageLike | Iterable[ImageLike]) -> list[bytes]:
    """One image or a sequence of them -> list of encoded bytes."""
    if isinstance(images, (bytes, bytearray, str, os.PathLike)):
        images = [images]
    return [read_image_bytes(image) for image in images]
