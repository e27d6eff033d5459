"""The index interface every backend implements: add, remove, search, calibrate, info.

Similarity is the cosine: vectors are L2-normalised on the way in and the
backends rank by inner product, as the `search` signature of an export does.
"""

from __future__ import annotations

import abc
import os
from typing import Sequence

import numpy as np

from tfdnc.index.calibrate import calibrate_threshold
from tfdnc.index.hits import MISSING, IndexHits
from tfdnc.index.idmap import IdMap
from tfdnc.utils import l2_normalize

DEFAULT_MAX_K = 100


class VectorIndex(abc.ABC):
    """A gallery of embeddings with ids, paths and labels; see `FaissIndex`, `MilvusIndex`.

    Args:
        dim: embedding dimension.
        max_k: the largest k a search may ask for.
        threshold: match threshold (cosine); None until calibrated.

    Examples:
        >>> from tfdnc.index import FaissIndex
        >>> rng = np.random.default_rng(0)
        >>> embeddings, query_embeddings = rng.normal(size=(20, 64)), rng.normal(size=(2, 64))
        >>> files, classes = [f"{i}.jpg" for i in range(20)], np.arange(20) % 4
        >>> index = FaissIndex(dim=64)
        >>> ids = index.add(embeddings, paths=files, labels=classes)
        >>> hits = index.search(query_embeddings, k=5)
        >>> removed = index.remove(ids[:2])
    """

    backend = ""

    def __init__(self, dim: int, *, max_k: int = DEFAULT_MAX_K, threshold: float | None = None):
        if int(dim) < 1:
            raise ValueError(f"{type(self).__name__}: `dim` must be >= 1, got {dim}")
        if int(max_k) < 1:
            raise ValueError(f"{type(self).__name__}: `max_k` must be >= 1, got {max_k}")
        self.dim = int(dim)
        self.max_k = int(max_k)
        self.threshold = None if threshold is None else float(threshold)
        self.calibration: dict | None = None
        self.id_map = IdMap()

    def __len__(self) -> int:
        return len(self.id_map)

    # --- backend -------------------------------------------------------------
    @abc.abstractmethod
    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Stores unit `vectors` under int64 `ids`."""

    @abc.abstractmethod
    def _remove(self, ids: np.ndarray) -> None:
        """Drops `ids` (all present in the id map)."""

    @abc.abstractmethod
    def _search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (Q, k); ids `MISSING` where fewer than k."""

    @abc.abstractmethod
    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of `ids` (NotImplementedError when the index keeps none exactly)."""

    @abc.abstractmethod
    def settings(self) -> dict:
        """Backend, index type and search parameters (saved in the index metadata)."""

    # --- public --------------------------------------------------------------
    def add(self, embeddings, paths: Sequence[str], labels: Sequence | None = None) -> np.ndarray:
        """Adds (N, dim) embeddings of images `paths` (with optional `labels`); returns their ids."""
        vectors = self._check_vectors(embeddings, "embeddings")
        if len(paths) != len(vectors):
            raise ValueError(f"{type(self).__name__}.add: {len(vectors)} embeddings but {len(paths)} paths")
        if labels is not None and len(labels) != len(vectors):
            raise ValueError(f"{type(self).__name__}.add: {len(vectors)} embeddings but {len(labels)} labels")
        if not len(vectors):
            return np.zeros(0, np.int64)
        ids = self.id_map.add(paths, labels)
        try:
            self._add(ids, vectors)
        except BaseException:
            self.id_map.remove(ids)
            raise
        return ids

    def remove(self, ids) -> int:
        """Removes images by id, without rebuilding; returns how many were removed."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        unknown = [int(i) for i in ids if int(i) not in self.id_map]
        if unknown:
            raise KeyError(f"{type(self).__name__}.remove: id(s) {unknown[:5]} are not in the index")
        ids = np.unique(ids)
        self._remove(ids)
        self.id_map.remove(ids)
        return len(ids)

    def remove_paths(self, paths: Sequence[str]) -> int:
        """Removes every indexed image with one of these paths."""
        return self.remove(self.id_map.ids_of_paths(paths))

    def search(self, queries, k: int = 10) -> IndexHits:
        """Top-k hits of (Q, dim) queries; k may be at most `max_k`.

        An empty index answers (Q, 0) hits; fewer than k stored vectors give
        fewer columns.
        """
        k = self.check_k(k)
        vectors = self._check_vectors(queries, "queries")
        k = min(k, len(self))
        if k == 0 or not len(vectors):
            sims, ids = np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
        else:
            sims, ids = self._search(vectors, k)
            sims = np.where(ids == MISSING, np.nan, sims).astype(np.float32)
        return IndexHits(
            ids=ids,
            similarities=sims,
            paths=[self.id_map.paths(row) for row in ids],
            labels=[self.id_map.labels(row) for row in ids],
            threshold=self.threshold,
        )

    def vectors(self, ids=None) -> np.ndarray:
        """Stored unit vectors of `ids` (default: every id, in increasing order)."""
        ids = np.sort(self.id_map.ids) if ids is None else np.atleast_1d(np.asarray(ids, np.int64))
        if not len(ids):
            return np.zeros((0, self.dim), np.float32)
        return self._vectors(ids)

    def calibrate(self, embeddings, labels, target_precision: float = 0.95,
                  paths: Sequence[str] | None = None) -> dict:
        """Sets `threshold` to reach `target_precision` on a labelled validation set.

        Each validation embedding queries the index; its nearest hit counts as
        correct when its label equals the validation label. With `paths`, a
        hit on the same image path is skipped (validation images that are
        also in the gallery). Returns the calibration (also kept in
        `calibration` and saved with the index).
        """
        vectors = self._check_vectors(embeddings, "embeddings")
        labels = [str(label) for label in labels]
        if len(labels) != len(vectors):
            raise ValueError(f"calibrate: {len(vectors)} embeddings but {len(labels)} labels")
        if len(self) == 0:
            raise ValueError("calibrate: the index is empty; add a gallery first")
        if not any(label is not None for label in self.id_map.labels(self.id_map.ids)):
            raise ValueError("calibrate: the index holds no labels; build it from labelled images "
                             "(class subfolders or a CSV `label` column)")
        saved, self.threshold = self.threshold, None
        try:
            hits = self.search(vectors, k=min(2 if paths is not None else 1, self.max_k, len(self)))
        finally:
            self.threshold = saved
        column = np.zeros(len(vectors), dtype=np.int64)
        if paths is not None:
            same = np.array([hits.paths[i][0] == os.fspath(p) for i, p in enumerate(paths)])
            column[same] = 1
            if hits.k < 2 and same.any():
                raise ValueError("calibrate: every validation image is the only indexed image")
        rows = np.arange(len(vectors))
        best_labels = [hits.labels[i][c] for i, c in zip(rows, column)]
        result = calibrate_threshold(hits.similarities[rows, column],
                                     [b == v for b, v in zip(best_labels, labels)], target_precision)
        self.threshold = result["threshold"]
        self.calibration = result
        return result

    def discard(self) -> None:
        """Lets go of what the open index holds besides memory (Milvus: its working database).

        Saved versions stay; the index cannot search afterwards. Faiss holds
        nothing else.
        """

    def info(self) -> dict:
        """Size, dimension, limits, threshold and backend settings."""
        return {"count": len(self), "dim": self.dim, "metric": "cosine", "max_k": self.max_k,
                "threshold": self.threshold, "calibration": self.calibration, **self.settings()}

    # --- checks --------------------------------------------------------------
    def check_k(self, k) -> int:
        if isinstance(k, bool) or int(k) != k or int(k) < 1:
            raise ValueError(f"search: k must be a positive integer, got {k!r}")
        if int(k) > self.max_k:
            raise ValueError(f"search: k={int(k)} exceeds this index's max_k={self.max_k} "
                             "(rebuild with a larger --max-k)")
        return int(k)

    def _check_vectors(self, x, name: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1 and x.size == self.dim:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{type(self).__name__}: `{name}` must be (N, {self.dim}), got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{type(self).__name__}: `{name}` holds NaN or infinite values")
        return np.ascontiguousarray(l2_normalize(x))
