"""Ids <-> image paths and labels: what an index answers besides similarities."""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

NO_LABEL = ""


class IdMap:
    """Int64 ids of indexed vectors, with the image path and label of each.

    Ids are handed out in increasing order and never reused, so a removed id
    cannot come back as another image. Each path is kept as it was given (what
    search answers) and as an absolute path, so an image can be named either
    way later, from any working directory (`ids_of_paths`).

    Examples:
        >>> ids = IdMap()
        >>> ids.add(["cats/1.jpg", "dogs/2.jpg"], ["cats", "dogs"])
        array([0, 1])
        >>> ids.paths([1])
        ['dogs/2.jpg']
    """

    def __init__(self):
        self._rows: dict[int, tuple[str, str]] = {}
        self._absolute: dict[int, str] = {}  # id -> absolute path when added (maps saved before: none)
        self.next_id = 0

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, image_id: int) -> bool:
        return int(image_id) in self._rows

    @property
    def ids(self) -> np.ndarray:
        return np.fromiter(self._rows, dtype=np.int64, count=len(self._rows))

    def add(self, paths: Sequence[str], labels: Sequence[str | None] | None = None) -> np.ndarray:
        """Registers images; returns their new ids."""
        paths = [os.fspath(p) for p in paths]
        labels = list(labels) if labels is not None else [None] * len(paths)
        if len(labels) != len(paths):
            raise ValueError(f"IdMap.add: {len(paths)} paths but {len(labels)} labels")
        ids = np.arange(self.next_id, self.next_id + len(paths), dtype=np.int64)
        for image_id, path, label in zip(ids, paths, labels):
            self._rows[int(image_id)] = (path, NO_LABEL if label is None else str(label))
            self._absolute[int(image_id)] = _absolute(path)
        self.next_id += len(paths)
        return ids

    def remove(self, ids: Iterable[int]) -> np.ndarray:
        """Forgets `ids`; a `KeyError` names the first unknown one (nothing is removed then)."""
        ids = np.asarray(list(ids), dtype=np.int64)
        unknown = [int(i) for i in ids if int(i) not in self._rows]
        if unknown:
            raise KeyError(f"id(s) {unknown[:5]} are not in the index")
        for image_id in ids:
            del self._rows[int(image_id)]
            self._absolute.pop(int(image_id), None)
        return ids

    def ids_of_paths(self, paths: Iterable[str]) -> np.ndarray:
        """Ids of images by path; a `KeyError` names a path that is not indexed.

        A path matches the path an image was indexed under, or its absolute
        path: `gallery/cat/3.jpg` (as `tfdnc index build ... gallery/` keeps it)
        and `/data/gallery/cat/3.jpg` name the same image. Images of a map saved
        without absolute paths resolve theirs from the working directory.
        """
        by_path: dict[str, list[int]] = {}
        by_absolute: dict[str, list[int]] = {}
        for image_id, (path, _) in self._rows.items():
            by_path.setdefault(path, []).append(image_id)
            absolute = self._absolute.get(image_id) or _absolute(path)
            by_absolute.setdefault(absolute, []).append(image_id)
        found = []
        for path in paths:
            path = os.fspath(path)
            matches = by_path.get(path) or by_absolute.get(_absolute(path))
            if not matches:
                raise KeyError(f"image {path!r} is not in the index")
            found.extend(matches)
        return np.asarray(found, dtype=np.int64)

    def paths(self, ids: Iterable[int]) -> list[str | None]:
        """Path of each id (None for -1, the id of a missing hit)."""
        return [self._rows[int(i)][0] if int(i) >= 0 else None for i in ids]

    def labels(self, ids: Iterable[int]) -> list[str | None]:
        """Label of each id (None for -1 or an image indexed without label)."""
        out = []
        for image_id in ids:
            label = self._rows[int(image_id)][1] if int(image_id) >= 0 else NO_LABEL
            out.append(label if label != NO_LABEL else None)
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Writes an .npz of `ids`, `paths`, `labels`, `next_id` (no pickles)."""
        ids = self.ids
        rows = [self._rows[int(i)] for i in ids]
        np.savez(
            path,
            ids=ids,
            paths=np.array([r[0] for r in rows], dtype=np.str_),
            labels=np.array([r[1] for r in rows], dtype=np.str_),
            absolute_paths=np.array([self._absolute.get(int(i), "") for i in ids], dtype=np.str_),
            next_id=np.int64(self.next_id),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "IdMap":
        try:
            with np.load(path, allow_pickle=False) as data:
                ids, paths, labels = data["ids"], data["paths"], data["labels"]
                absolute = data["absolute_paths"] if "absolute_paths" in data.files else [""] * len(ids)
                next_id = int(data["next_id"])
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"cannot read id map {os.fspath(path)!r}: {exc}") from exc
        if not (len(ids) == len(paths) == len(labels)):
            raise ValueError(f"id map {os.fspath(path)!r} is inconsistent: "
                             f"{len(ids)} ids, {len(paths)} paths, {len(labels)} labels")
        loaded = cls()
        loaded._rows = {int(i): (str(p), str(label)) for i, p, label in zip(ids, paths, labels)}
        loaded._absolute = {int(i): str(a) for i, a in zip(ids, absolute) if str(a)}
        loaded.next_id = max(next_id, int(ids.max()) + 1 if len(ids) else 0)
        return loaded


def _absolute(path: str) -> str:
    """`path` made absolute from the working directory, normalised (`a/./b` is `a/b`); links kept."""
    return os.path.normpath(os.path.abspath(path))
