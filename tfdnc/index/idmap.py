"""Ids <-> image paths and labels: what an index answers besides similarities."""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

NO_LABEL = ""


class IdMap:
    """Int64 ids of indexed vectors, with the image path and label of each.

    Ids are handed out in increasing order and never reused, so a removed id
    cannot come back as another image.

    Example:
    >>> ids = IdMap()
    >>> ids.add(["cats/1.jpg", "dogs/2.jpg"], ["cats", "dogs"])
    array([0, 1])
    >>> ids.paths([1])
    ['dogs/2.jpg']
    """

    def __init__(self):
        self._rows: dict[int, tuple[str, str]] = {}
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
        return ids

    def ids_of_paths(self, paths: Iterable[str]) -> np.ndarray:
        """Ids of images by path; a `KeyError` names a path that is not indexed."""
        by_path: dict[str, list[int]] = {}
        for image_id, (path, _) in self._rows.items():
            by_path.setdefault(path, []).append(image_id)
        found = []
        for path in paths:
            path = os.fspath(path)
            if path not in by_path:
                raise KeyError(f"image {path!r} is not in the index")
            found.extend(by_path[path])
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
            next_id=np.int64(self.next_id),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "IdMap":
        try:
            with np.load(path, allow_pickle=False) as data:
                ids, paths, labels = data["ids"], data["paths"], data["labels"]
                next_id = int(data["next_id"])
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"cannot read id map {os.fspath(path)!r}: {exc}") from exc
        if not (len(ids) == len(paths) == len(labels)):
            raise ValueError(f"id map {os.fspath(path)!r} is inconsistent: "
                             f"{len(ids)} ids, {len(paths)} paths, {len(labels)} labels")
        loaded = cls()
        loaded._rows = {int(i): (str(p), str(label)) for i, p, label in zip(ids, paths, labels)}
        loaded.next_id = max(next_id, int(ids.max()) + 1 if len(ids) else 0)
        return loaded
