"""Image files on disk: the one list of extensions tfdnc reads, and the one lister."""

from __future__ import annotations

import os

# What `tf.io.decode_image` decodes (WebP since TensorFlow 2.16), and so what
# training, pretraining, export galleries and the serving clients accept.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def is_image_file(name: str | os.PathLike) -> bool:
    """Whether `name` has an image extension (any case) and is not hidden."""
    base = os.path.basename(os.fspath(name))
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def list_image_files(folder: str | os.PathLike, *, what: str = "image folder") -> list[str]:
    """Every image file under `folder`, recursively, sorted by path.

    Hidden files are skipped. Raises `NotADirectoryError` when `folder` is not
    a directory and `ValueError` when it holds no image; both messages start
    with `what` (e.g. "--data-dir") and name the folder.

    Example:
    >>> list_image_files("gallery")  # ['gallery/cat/1.jpg', 'gallery/dog/2.png', ...]
    """
    root = os.fspath(folder)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{what} {root!r} does not exist or is not a directory")
    found = sorted(
        os.path.join(dirpath, name)
        for dirpath, _, names in os.walk(root)
        for name in names
        if is_image_file(name)
    )
    if not found:
        raise ValueError(f"{what} {root!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return found
