"""Recall@K through an index, next to exact search: what an approximate index costs."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tfdnc.index.base import VectorIndex
from tfdnc.index.hits import MISSING


def recall_through_index(index: VectorIndex, queries, query_labels, gallery_labels=None,
                         ks: Sequence[int] = (1, 2, 4, 8), *, exclude_self: bool = False,
                         gallery_embeddings=None) -> dict:
    """Recall@K of `queries` answered by `index`, and by exact search over the same gallery.

    Args:
        index: a `VectorIndex` holding the gallery.
        queries: (Q, d) query embeddings; query_labels: (Q,) their labels.
        gallery_labels: label of each indexed vector in increasing id order
            (the order the gallery was added in); default: the labels of the
            index's id map.
        ks: the K of Recall@K.
        exclude_self: the queries are the gallery itself (query i is the
            i-th indexed vector in id order): a query's own hit is skipped,
            as in all-vs-all evaluation.
        gallery_embeddings: the gallery vectors in id order for the exact
            reference; default: read back from the index (not possible for
            IVF-PQ, which keeps only codes: exact is then None).

    Returns:
        {"index": {k: recall}, "exact": {k: recall} or None, "num_queries",
         "settings": the index's settings}. Queries whose class is absent
        from the gallery are left out of both, as in `tfdnc.evaluation`.

    Examples:
        >>> from tfdnc.index import FaissIndex
        >>> rng = np.random.default_rng(0)
        >>> test_emb, test_labels = rng.normal(size=(300, 16)).astype("float32"), np.arange(300) % 30
        >>> index = FaissIndex(16, index_type="hnsw")
        >>> ids = index.add(test_emb, [f"{i}.jpg" for i in range(300)], test_labels)
        >>> out = recall_through_index(index, test_emb, test_labels, ks=(1, 10), exclude_self=True)
        >>> lost = out["exact"][1] - out["index"][1]   # Recall@1 lost to the approximate index
    """
    # Loaded on use, here and below: tfdnc.evaluation imports Keras, which `tfdnc index --help` does without.
    from tfdnc.evaluation.metrics import relevant_counts

    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"recall_through_index: `ks` must be positive integers, got {ks}")
    ids = np.sort(index.id_map.ids)
    queries = np.asarray(queries, np.float32)
    gallery_labels, query_labels = _checked_labels(index, ids, queries, query_labels, gallery_labels, exclude_self)
    found = _found_within_k(index, ids, queries, query_labels, gallery_labels, ks, exclude_self)
    valid = relevant_counts(query_labels, gallery_labels, exclude_self) > 0
    if not valid.any():
        raise ValueError("recall_through_index: no query has a relevant gallery item")
    through_index = {k: float(found[valid, i].mean()) for i, k in enumerate(ks)}
    exact = _exact_recall(index, ids, queries, query_labels, gallery_labels, gallery_embeddings, ks, exclude_self)
    return {"index": through_index, "exact": exact, "num_queries": int(valid.sum()), "settings": index.settings()}


def _checked_labels(index: VectorIndex, ids: np.ndarray, queries: np.ndarray, query_labels, gallery_labels,
                    exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """The gallery labels (default: the id map's) and query labels as strings, checked against the counts."""
    if gallery_labels is None:
        gallery_labels = index.id_map.labels(ids)
        if any(label is None for label in gallery_labels):
            raise ValueError("recall_through_index: the index has unlabelled images; pass `gallery_labels`")
    gallery_labels = np.asarray([str(g) for g in gallery_labels])
    query_labels = np.asarray([str(q) for q in query_labels])
    if len(gallery_labels) != len(ids):
        raise ValueError(f"recall_through_index: {len(gallery_labels)} gallery labels for {len(ids)} indexed vectors")
    if len(query_labels) != len(queries):
        raise ValueError(f"recall_through_index: {len(queries)} queries but {len(query_labels)} labels")
    if exclude_self and len(queries) != len(ids):
        raise ValueError("recall_through_index: exclude_self needs the queries to be the indexed gallery, "
                         f"got {len(queries)} queries for {len(ids)} indexed vectors")
    return gallery_labels, query_labels


def _found_within_k(index: VectorIndex, ids: np.ndarray, queries: np.ndarray, query_labels: np.ndarray,
                    gallery_labels: np.ndarray, ks: tuple[int, ...], exclude_self: bool) -> np.ndarray:
    """(Q, len(ks)) bool: whether the index's first relevant hit for each query ranks within each K."""
    k_needed = max(ks) + (1 if exclude_self else 0)
    k_search = min(k_needed, index.max_k, len(ids))
    if k_search < min(k_needed, len(ids)):
        raise ValueError(f"recall_through_index: K={max(ks)} needs k={k_needed}, above the index's max_k={index.max_k}")
    hits = index.search(queries, k_search)
    row_of = {int(i): r for r, i in enumerate(ids)}
    found = np.zeros((len(queries), len(ks)), bool)
    for q in range(len(queries)):
        rows = [row_of[int(i)] for i in hits.ids[q] if i != MISSING]
        if exclude_self:
            rows = [r for r in rows if r != q]
        relevant = [gallery_labels[r] == query_labels[q] for r in rows]
        first = relevant.index(True) if True in relevant else np.iinfo(np.int64).max
        found[q] = first < np.asarray(ks)
    return found


def _exact_recall(index: VectorIndex, ids: np.ndarray, queries: np.ndarray, query_labels: np.ndarray,
                  gallery_labels: np.ndarray, gallery_embeddings, ks: tuple[int, ...],
                  exclude_self: bool) -> dict | None:
    """Recall@K by exact search over the gallery vectors (given, or read back); None without them."""
    from tfdnc.evaluation.metrics import recall_at_k

    if gallery_embeddings is None:
        try:
            gallery_embeddings = index.vectors(ids)
        except NotImplementedError:
            return None
    if exclude_self:
        return recall_at_k(gallery_embeddings, gallery_labels, ks, exclude_self=True)
    return recall_at_k(gallery_embeddings, gallery_labels, ks, query_embeddings=queries,
                       query_labels=query_labels, exclude_self=False)
