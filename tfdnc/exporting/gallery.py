"""The search gallery baked into an export: embeddings plus ids."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tfdnc.utils import l2_normalize, list_image_files


def list_images(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """All image files under `folder` (recursively, sorted) as (id, path) pairs.

    The id is the path relative to `folder` with '/' separators: what a
    gallery built from the folder returns from `search`, and what
    `tfdnc embed` writes beside each embedding, so the two line up.

    Examples:
        >>> [image_id for image_id, _ in list_images("gallery")]
        ['cat/1.jpg', 'cat/3.jpg', 'dog/2.png']
    """
    root = os.fspath(folder)
    return [
        (os.path.relpath(path, root).replace(os.sep, "/"), path)
        for path in list_image_files(root, what="image folder")
    ]


@dataclass
class Gallery:
    """A set of gallery embeddings and their ids.

    Args:
        embeddings: (N, d) float array; L2-normalised at export, so search
            similarities are cosines.
        ids: (N,) ids, strings (e.g. file names) or integers; returned by the
            `search` signature in place of row numbers.

    Examples:
        >>> gallery = Gallery(np.random.rand(100, 64), np.arange(100))
        >>> np.savez("gallery.npz", embeddings=np.random.rand(10, 64), ids=np.arange(10))
        >>> gallery = Gallery.from_npz("gallery.npz")  # arrays "embeddings", "ids"
    """

    embeddings: np.ndarray
    ids: np.ndarray

    def __post_init__(self):
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        ids = np.asarray(self.ids)
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] < 1:
            raise ValueError(
                f"Gallery: `embeddings` must be a non-empty (N, d) array, got shape {self.embeddings.shape}"
            )
        if not np.all(np.isfinite(self.embeddings)):
            raise ValueError("Gallery: `embeddings` contains NaN or infinite values")
        if ids.ndim != 1 or len(ids) != len(self.embeddings):
            raise ValueError(
                f"Gallery: `ids` must be one id per embedding ({len(self.embeddings)}), got shape {ids.shape}"
            )
        if ids.dtype.kind in "iu":
            ids = ids.astype(np.int64)
        elif ids.dtype.kind in "USO":
            ids = np.array([i.decode() if isinstance(i, bytes) else str(i) for i in ids], dtype=object)
        else:
            raise ValueError(f"Gallery: `ids` must be strings or integers, got dtype {ids.dtype}")
        self.ids = ids

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def normalized_embeddings(self) -> np.ndarray:
        return l2_normalize(self.embeddings, axis=1)

    @classmethod
    def from_npz(cls, path: str | os.PathLike) -> "Gallery":
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = {"embeddings", "ids"} - set(data.files)
                if missing:
                    raise ValueError(
                        f"gallery file {os.fspath(path)!r} lacks array(s) {sorted(missing)}; "
                        f"it has {data.files}"
                    )
                return cls(data["embeddings"], data["ids"])
        except OSError as exc:
            raise ValueError(f"cannot read gallery file {os.fspath(path)!r}: {exc}") from exc

    @classmethod
    def from_images(
        cls,
        folder: str | os.PathLike,
        embed: Callable[[Sequence[bytes]], np.ndarray],
        batch_size: int = 64,
    ) -> "Gallery":
        """Embeds every image under `folder`; ids are the relative paths."""
        entries = list_images(folder)
        chunks = []
        for start in range(0, len(entries), batch_size):
            batch = entries[start : start + batch_size]
            contents = [_read_bytes(path) for _, path in batch]
            try:
                chunks.append(np.asarray(embed(contents)))
            except Exception as exc:  # noqa: BLE001 - re-raised naming the file
                _raise_naming_the_image(batch, contents, embed, exc)
        return cls(np.concatenate(chunks), np.array([i for i, _ in entries], dtype=object))

    @classmethod
    def load(cls, source, embed: Callable[[Sequence[bytes]], np.ndarray]) -> "Gallery":
        """A `Gallery`, an .npz file, a folder of images or (embeddings, ids)."""
        if isinstance(source, Gallery):
            return source
        if isinstance(source, tuple) and len(source) == 2:
            return cls(*source)
        path = os.fspath(source)
        if os.path.isdir(path):
            return cls.from_images(path, embed)
        if path.endswith(".npz") and os.path.isfile(path):
            return cls.from_npz(path)
        raise ValueError(
            f"gallery {path!r} is neither a folder of images nor an .npz file "
            "with arrays 'embeddings' and 'ids'"
        )


def _raise_naming_the_image(batch, contents, embed, error: Exception):
    """Embeds the batch's images one by one; raises ValueError naming the first that fails."""
    for (_, path), one in zip(batch, contents):
        try:
            embed([one])
        except Exception as exc:  # noqa: BLE001 - re-raised naming the file
            raise ValueError(f"cannot embed gallery image {path!r}: {_first_line(exc)}") from exc
    raise ValueError(f"cannot embed gallery images {batch[0][1]!r} ... {batch[-1][1]!r}: {error}") from error


def _first_line(error: Exception) -> str:
    # TF errors carry the graph's message first, then node and op names.
    return str(getattr(error, "message", error)).strip().splitlines()[0]


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read gallery image {path!r}: {exc}") from exc
