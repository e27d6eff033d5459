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


def list_image_files(folder: str | os.PathLike, *, what: str = "image folder",
                     skipped: list[tuple[str, str]] | None = None,
                     seen: dict[str, str] | None = None) -> list[str]:
    """Every image file under `folder`, recursively, sorted by path; each real file once.

    A symbolic link to a file is followed, but a file reached twice (a link
    and its target, two links to one file) is listed once, under the path
    that sorts first; the others are appended to `skipped` as (path,
    reason). Symbolic links to folders below `folder` are not entered (so a
    link loop cannot recur); they are named in `skipped` too. A link that
    leads nowhere (dangling, or a loop of links) is listed, for the image
    check to name. Hidden files are skipped silently.

    Args:
        folder: the folder to list.
        what: how error messages name the folder (e.g. "--data-dir").
        skipped: a list to append (path, reason) to for what is left out.
        seen: real path -> listed path of files listed before (by earlier
            calls given the same dict), so one file reached through two
            class folders is listed once; updated.

    Raises `NotADirectoryError` when `folder` is not a directory and
    `ValueError` when it holds no image file (duplicates count: a folder
    whose images were all listed before gives []); both messages start with
    `what` and name the folder.

    Examples:
        >>> list_image_files("gallery")
        ['gallery/cat/1.jpg', 'gallery/cat/3.jpg', 'gallery/dog/2.png']
    """
    root = os.fspath(folder)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{what} {root!r} does not exist or is not a directory")
    skipped = [] if skipped is None else skipped
    seen = {} if seen is None else seen
    candidates = sorted(_walk(root, skipped))
    if not candidates:
        raise ValueError(f"{what} {root!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    found = []
    for path, real in candidates:
        first = seen.setdefault(real, path) if real is not None else path
        if first == path:
            found.append(path)
        else:
            skipped.append((path, f"the same file as {first} (reached again through a symbolic link); "
                                  "listed once"))
    return found


def _walk(root: str, skipped: list[tuple[str, str]]):
    """(path, real path or None when it cannot be resolved) of the image files under `root`."""
    pending = [root]
    while pending:
        folder = pending.pop()
        real_folder = os.path.realpath(folder)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped.append((folder, f"cannot list the folder: {exc.strerror or exc}"))
            continue
        for entry in entries:
            link = entry.is_symlink()
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
            elif link and os.path.isdir(entry.path):  # a link to a folder (False for a loop of links)
                skipped.append((entry.path, f"a symbolic link to a folder ({os.path.realpath(entry.path)}) "
                                            "inside an image folder is not followed"))
            elif is_image_file(entry.name):
                if not link:
                    yield entry.path, os.path.join(real_folder, entry.name)
                else:
                    # Dangling links and loops of links are listed unresolved: the image check names them.
                    yield entry.path, os.path.realpath(entry.path) if os.path.exists(entry.path) else None
