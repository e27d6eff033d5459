"""Image files as request payloads: encoded bytes, or file paths read to bytes.

Folders are listed by `tfdnc.exporting.gallery.list_images` (also
`tfdnc.serving.list_images`), whose ids are the ones an export's gallery uses.
"""

from __future__ import annotations

import os
from typing import Iterable, Union

ImageLike = Union[bytes, bytearray, str, os.PathLike]


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
