"""What an index search answers: ids, similarities, paths, labels, and match flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

MISSING = -1  # id of an empty slot (fewer than k vectors to return)


@dataclass
class IndexHits:
    """The top-k hits of a batch of queries; every array is (queries, k).

    Attributes:
        ids: int64 index ids, `MISSING` (-1) where fewer than k vectors exist.
        similarities: cosine similarities (NaN where missing).
        paths, labels: per query, the image path / label of each hit.
        threshold: the calibrated match threshold, or None (every hit matches).

    Examples:
        >>> from tfdnc.index import FaissIndex
        >>> rng = np.random.default_rng(0)
        >>> index = FaissIndex(16)
        >>> ids = index.add(rng.normal(size=(20, 16)), [f"{i}.jpg" for i in range(20)])
        >>> queries = rng.normal(size=(2, 16))
        >>> hits = index.search(queries, k=5)
        >>> hits.matched.shape          # (queries, 5) bool: similarity >= threshold
        (2, 5)
        >>> records = hits.to_records(["q1.jpg", "q2.jpg"])
        >>> len(records)
        10
    """

    ids: np.ndarray
    similarities: np.ndarray
    paths: list[list[str | None]]
    labels: list[list[str | None]]
    threshold: float | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    @property
    def matched(self) -> np.ndarray:
        """Hits that exist and reach the threshold (all existing hits without one)."""
        present = self.ids != MISSING
        if self.threshold is None:
            return present
        with np.errstate(invalid="ignore"):
            return present & (self.similarities >= self.threshold)

    def to_records(self, query_ids: Iterable | None = None, *, include_unmatched: bool = False) -> list[dict]:
        """One dict per hit: query, rank, id, path, label, similarity, match.

        Hits below the threshold are left out unless `include_unmatched`; a
        query left without any hit gets one record with `match` False and
        `id` None: "no match".
        """
        query_ids = list(query_ids) if query_ids is not None else list(range(len(self)))
        if len(query_ids) != len(self):
            raise ValueError(f"to_records: {len(query_ids)} query ids for {len(self)} queries")
        matched = self.matched
        records = []
        for q, query in enumerate(query_ids):
            kept = 0
            for rank in range(self.k):
                if self.ids[q, rank] == MISSING or not (matched[q, rank] or include_unmatched):
                    continue
                kept += 1
                records.append({
                    "query": query, "rank": rank + 1, "id": int(self.ids[q, rank]),
                    "path": self.paths[q][rank], "label": self.labels[q][rank],
                    "similarity": float(self.similarities[q, rank]), "match": bool(matched[q, rank]),
                })
            if not kept:
                records.append({"query": query, "rank": None, "id": None, "path": None, "label": None,
                                "similarity": None, "match": False})
        return records
