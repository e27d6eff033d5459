"""The gallery a Keras model answers queries from, as tensorflow-similarity's `SimilarityModel` does.

`ModelIndex` holds a `FaissIndex` (exact inner product by default) of the
model's embeddings with a label and a data string per item, and the
calibrated cutpoints `match` uses. It takes embeddings, not images: the
model's thin methods (`DivideAndConquerModel.index`, `lookup`, `match`,
`calibrate`, ...) embed and hand them over. It saves as a tfdnc index
version (`tfdnc.index.store`: faiss file, id map, JSON metadata with
checksums; no pickle), which is how it travels inside a `.keras` file.

Examples:
    >>> rng = np.random.default_rng(0)
    >>> centres = rng.normal(size=(5, 64))
    >>> def near(labels): return centres[labels] + 0.1 * rng.normal(size=(len(labels), 64))
    >>> gallery_labels, val_labels = np.arange(50) % 5, np.arange(20) % 5
    >>> gallery_embeddings, val_embeddings, query_embeddings = near(gallery_labels), near(val_labels), near([0, 3])
    >>> index = ModelIndex(dim=64)
    >>> ids = index.add(gallery_embeddings, labels=gallery_labels)
    >>> threshold = index.calibrate(val_embeddings, val_labels, metric="f1")["threshold"]
    >>> index.match(query_embeddings).tolist()            # labels; -1 below the threshold
    [0, 3]
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from tfdnc.index.calibrate import calibrate_threshold
from tfdnc.index.faiss_index import FaissIndex
from tfdnc.index.hits import MISSING
from tfdnc.index.store import open_index, save_index

OPTIMAL = "optimal"  # the cutpoint with the best F1, as tensorflow-similarity names it
_INT = re.compile(r"^-?\d+$")


@dataclass
class Lookup:
    """One neighbour of a query: `rank` (1 = nearest), index `id`, `label`, `data`, cosine `similarity`.

    `distance` is the cosine distance 1 - similarity (tensorflow-similarity's
    default distance for unit embeddings).
    """

    rank: int
    id: int
    label: object
    data: str | None
    similarity: float

    @property
    def distance(self) -> float:
        return 1.0 - self.similarity


class ModelIndex:
    """Embeddings with labels and data, searched by cosine similarity; calibrated match cutpoints.

    Args:
        dim: embedding dimension.
        index_type: the `FaissIndex` type ("flat": exact; "hnsw", "ivf_flat",
            ... for large galleries).
        max_k: the largest k a lookup may ask for.

    Labels given as integers come back as integers (`match`, `lookup`);
    other labels come back as strings.
    """

    def __init__(self, dim: int, index_type: str = "flat", max_k: int = 100):
        self.index = FaissIndex(dim, index_type, max_k=max_k)
        self.cutpoints: dict[str, dict] = {}

    @classmethod
    def wrap(cls, index) -> "ModelIndex":
        """A `ModelIndex` around an opened `VectorIndex` (its saved cutpoints restored)."""
        model_index = cls.__new__(cls)
        model_index.index = index
        calibration = index.calibration or {}
        model_index.cutpoints = dict(calibration.get("cutpoints", {}))
        return model_index

    def __len__(self) -> int:
        return len(self.index)

    @property
    def dim(self) -> int:
        return self.index.dim

    # --- gallery ------------------------------------------------------------------
    def add(self, embeddings, labels=None, data=None) -> np.ndarray:
        """Adds (N, dim) embeddings with optional labels and data (stored as strings); returns their ids."""
        embeddings = np.asarray(embeddings, np.float32)
        n = len(embeddings)
        for name, values in (("y", labels), ("data", data)):
            if values is not None and len(values) != n:
                raise ValueError(f"index: {n} items in `x` but {len(values)} in `{name}`")
        labels = None if labels is None else [_label_string(v) for v in _rows(labels)]
        data = [""] * n if data is None else [_data_string(v) for v in _rows(data)]
        return self.index.add(embeddings, data, labels)

    def reset(self) -> None:
        """Empties the gallery and forgets the calibration (same type and limits)."""
        self.index = FaissIndex(self.index.dim, self.index.index_type, max_k=self.index.max_k)
        self.cutpoints = {}

    def gallery(self) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings, ids) of every item in id order; ids are the data strings when every item has one.

        What an export's `search` / `search_k` signatures are given, so they
        answer from this gallery.
        """
        ids = np.sort(self.index.id_map.ids)
        data = self.index.id_map.paths(ids)
        keys = np.array(data, dtype=object) if all(data) else ids
        return self.index.vectors(ids), keys

    def records(self, num_items: int = 0) -> list[dict]:
        """One dict per item in id order: `id`, `label`, `data` (`num_items` > 0: only the first ones)."""
        ids = np.sort(self.index.id_map.ids)
        if num_items > 0:
            ids = ids[:num_items]
        return [{"id": int(i), "label": _typed(label), "data": data or None}
                for i, label, data in zip(ids, self.index.id_map.labels(ids), self.index.id_map.paths(ids))]

    # --- queries ------------------------------------------------------------------
    def lookup(self, embeddings, k: int = 5) -> list[list[Lookup]]:
        """The k nearest gallery items of each query, nearest first."""
        self._check_not_empty("lookup")
        hits = self.index.search(embeddings, k=min(self.index.check_k(k), len(self.index)))
        out = []
        for q in range(len(hits)):
            row = []
            for rank in range(hits.k):
                if hits.ids[q, rank] == MISSING:
                    continue
                row.append(Lookup(rank=rank + 1, id=int(hits.ids[q, rank]), label=_typed(hits.labels[q][rank]),
                                  data=hits.paths[q][rank] or None, similarity=float(hits.similarities[q, rank])))
            out.append(row)
        return out

    def match(self, embeddings, cutpoint="optimal", no_match_label=-1) -> np.ndarray:
        """The nearest item's label per query, `no_match_label` where its similarity is below the cutpoint.

        `cutpoint`: a calibrated cutpoint's name ("optimal" for the best F1,
        or the metric of a target given to `calibrate`), or a similarity.
        """
        self._check_not_empty("match")
        threshold = self.threshold(cutpoint)
        hits = self.index.search(embeddings, k=1)
        labels = [_typed(row[0]) for row in hits.labels]
        matched = hits.similarities[:, 0] >= threshold
        out = [label if ok else no_match_label for label, ok in zip(labels, matched)]
        return np.asarray(out, dtype=np.int64 if all(isinstance(v, (int, np.integer)) for v in out) else object)

    def threshold(self, cutpoint="optimal") -> float:
        """The similarity of a calibrated cutpoint (a number is taken as the similarity itself)."""
        if isinstance(cutpoint, (int, float)) and not isinstance(cutpoint, bool):
            return float(cutpoint)
        if not self.cutpoints:
            raise ValueError("match: the index is not calibrated; run model.calibrate(x, y) on labelled "
                             "held-out data first, or pass a similarity as `cutpoint`")
        if cutpoint not in self.cutpoints:
            raise ValueError(f"match: no cutpoint {cutpoint!r}; calibrated: {sorted(self.cutpoints)}")
        return float(self.cutpoints[cutpoint]["threshold"])

    def calibrate(self, embeddings, labels, metric: str = "f1", target: float | None = None) -> dict:
        """Chooses the match threshold on labelled held-out data; returns it with the curve.

        The "optimal" cutpoint is always the best-F1 threshold; with a
        `target` (or `metric` other than F1) the cutpoint named after
        `metric` meets it too (see `tfdnc.index.calibrate.calibrate_threshold`).
        The chosen cutpoint becomes the index's threshold (what `match`
        and an export's search use by default).

        Returns:
            {"threshold", "precision", "recall", "f1", "matched", "queries",
             "metric", "target", "curve", "cutpoints"}.
        """
        self._check_not_empty("calibrate")
        labels = [_label_string(v) for v in _rows(labels)]
        hits = self.index.search(embeddings, k=1)
        if len(labels) != len(hits):
            raise ValueError(f"calibrate: {len(hits)} items in `x` but {len(labels)} labels in `y`")
        if all(row[0] is None for row in hits.labels):
            raise ValueError("calibrate: the index holds no labels; index the gallery with `y`")
        correct = [row[0] == label for row, label in zip(hits.labels, labels)]
        similarities = hits.similarities[:, 0]
        optimal = calibrate_threshold(similarities, correct, None, metric="f1")
        chosen = optimal if metric == "f1" and target is None else calibrate_threshold(
            similarities, correct, target, metric=metric)
        summary = {key: value for key, value in optimal.items() if key != "curve"}
        self.cutpoints = {OPTIMAL: summary}
        if chosen is not optimal:
            self.cutpoints[metric] = {key: value for key, value in chosen.items() if key != "curve"}
        self.index.threshold = chosen["threshold"]
        # Saved with the index (index.json); the curve stays out of the file.
        self.index.calibration = {"cutpoints": self.cutpoints, "metric": metric, "target": target}
        return {**chosen, "cutpoints": dict(self.cutpoints)}

    def evaluate_retrieval(self, embeddings, labels, ks=(1, 2, 4, 8)) -> dict:
        """Recall@K and precision@K of labelled queries against the gallery.

        Recall@K: the share of queries with an item of their label among the
        K nearest; precision@K: the share of the K nearest with the query's
        label. Queries whose label is not in the gallery are left out.
        """
        from tfdnc.index.recall import recall_through_index

        self._check_not_empty("evaluate_retrieval")
        ks = tuple(int(k) for k in ks)
        labels = [_label_string(v) for v in _rows(labels)]
        recall = recall_through_index(self.index, embeddings, labels, ks=ks)
        k_max = min(max(ks), len(self.index), self.index.max_k)
        hits = self.index.search(embeddings, k=k_max)
        gallery = set(self.index.id_map.labels(self.index.id_map.ids))
        valid = np.array([label in gallery for label in labels])
        same = np.array([[hit == label for hit in row] for row, label in zip(hits.labels, labels)], bool)
        out = {f"recall@{k}": recall["index"][k] for k in ks}
        out.update({f"precision@{k}": float(same[valid, :k].mean()) for k in ks if k <= k_max})
        out["queries"] = int(valid.sum())
        return out

    def evaluate_classification(self, embeddings, labels) -> dict:
        """Precision, recall, F1 and accuracy of `match` at every calibrated cutpoint."""
        self._check_not_empty("evaluate_classification")
        labels = [_label_string(v) for v in _rows(labels)]
        hits = self.index.search(embeddings, k=1)
        correct = np.array([row[0] == label for row, label in zip(hits.labels, labels)])
        out = {}
        for name in self.cutpoints or {}:
            threshold = self.threshold(name)
            matched = hits.similarities[:, 0] >= threshold
            tp = int((matched & correct).sum())
            precision = tp / max(int(matched.sum()), 1)
            recall = tp / max(int(correct.sum()), 1)
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            # A query is classified right when it matches its label or, with a wrong nearest label, does not match.
            accuracy = float(((matched & correct) | (~matched & ~correct)).mean())
            out[name] = {"threshold": threshold, "precision": precision, "recall": recall, "f1": f1,
                         "accuracy": accuracy}
        if not out:
            raise ValueError("evaluate_classification: the index is not calibrated; run model.calibrate(x, y)")
        return out

    def summary(self) -> dict:
        """Size, dimension, index type, threshold and cutpoints."""
        info = self.index.info()
        info.pop("calibration", None)
        info["cutpoints"] = {name: cut["threshold"] for name, cut in self.cutpoints.items()}
        return info

    # --- files ----------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> str:
        """Writes a new index version under `folder` (never overwriting one); returns its path."""
        return save_index(self.index, os.fspath(folder))

    @classmethod
    def load(cls, folder: str | os.PathLike, dim: int | None = None) -> "ModelIndex":
        """The latest version under `folder` (or that version folder), checksums checked."""
        return cls.wrap(open_index(os.fspath(folder), dim=dim))

    def _check_not_empty(self, what: str) -> None:
        if len(self.index) == 0:
            raise ValueError(f"{what}: the index is empty; add a gallery first with model.index(x, y)")


def _rows(values) -> list:
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] > 1:  # one-hot labels
        values = values.argmax(axis=1)
    return list(values.reshape(len(values), -1)[:, 0]) if values.ndim > 1 else list(values)


def _label_string(value) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode()
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return str(value)


def _data_string(value) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode()
    return str(value)


def _typed(label: str | None):
    """A stored label back as an int when it was one."""
    if label is None:
        return None
    return int(label) if _INT.match(label) else label
