"""Retrieval and clustering metrics of an embedding: Recall@K, MAP@R, R-precision, NMI, F1.

Two protocols:

- all-vs-all (default): every item queries all the others (CUB, CARS, SOP;
  the query itself is excluded);
- query-vs-gallery: pass `query_embeddings` / `query_labels` (In-shop,
  VehicleID).

Ranking and ties: see `tfdnc.evaluation.neighbors` (similarity descending,
lower gallery index first among equals). Queries whose class has no other
item in the gallery cannot retrieve anything; they are left out of the
retrieval metrics (as pytorch-metric-learning does), and `retrieval_metrics`
reports how many were used.

MAP@R and R-precision follow Musgrave et al., "A Metric Learning Reality
Check" (2020): with R the number of gallery items of the query's class,
R-precision = (relevant among the top R) / R and
MAP@R = 1/R * sum_{i<=R} P@i * rel(i).

Example:

```python
results = evaluate(test_embeddings, test_labels)   # {'recall@1': ..., 'nmi': ...}
recalls = recall_at_k(gallery, gallery_labels, ks=(1, 10, 20),
                      query_embeddings=queries, query_labels=query_labels)
```
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tfdnc.evaluation.neighbors import check_embeddings, iter_topk

ALL_METRICS = ("recall", "map@r", "r_precision", "nmi", "f1")


def _check_labels(labels, n: int, name: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"`{name}` must have shape ({n},) to match its embeddings, got {y.shape}")
    return y


def _check_ks(ks) -> tuple[int, ...]:
    ks = tuple(int(k) for k in np.atleast_1d(ks))
    if not ks or min(ks) < 1:
        raise ValueError(f"`ks` must be positive integers, got {ks}")
    return ks


def _setup(embeddings, labels, query_embeddings, query_labels, exclude_self):
    g = check_embeddings(embeddings, "embeddings")
    gl = _check_labels(labels, g.shape[0], "labels")
    if (query_embeddings is None) != (query_labels is None):
        raise ValueError("pass both `query_embeddings` and `query_labels`, or neither")
    if query_embeddings is None:
        return g, gl, g, gl, bool(exclude_self)
    q = check_embeddings(query_embeddings, "query_embeddings")
    ql = _check_labels(query_labels, q.shape[0], "query_labels")
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"`query_embeddings` has dimension {q.shape[1]} but `embeddings` {g.shape[1]}"
        )
    return q, ql, g, gl, False


def _relevant_counts(query_labels, gallery_labels, exclude_self) -> np.ndarray:
    """R per query: gallery items of its class (minus itself when in the gallery)."""
    classes, counts = np.unique(gallery_labels, return_counts=True)
    pos = np.searchsorted(classes, query_labels)
    pos = np.clip(pos, 0, len(classes) - 1)
    r = np.where(classes[pos] == query_labels, counts[pos], 0)
    return r - 1 if exclude_self else r


def retrieval_metrics(
    embeddings,
    labels,
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    query_embeddings=None,
    query_labels=None,
    exclude_self: bool = True,
    rank_metrics: bool = True,
    metric: str = "cosine",
    chunk_size: int | None = None,
) -> dict:
    """Recall@K (and MAP@R, R-precision) in one chunked pass over the gallery.

    Returns:
        dict with `recall@k` for every k, `map@r` and `r_precision` when
        `rank_metrics`, and `num_queries` (queries with >= 1 relevant item).
    """
    q, ql, g, gl, exclude_self = _setup(embeddings, labels, query_embeddings, query_labels, exclude_self)
    ks = _check_ks(ks)
    r = _relevant_counts(ql, gl, exclude_self)
    valid = r > 0
    if not valid.any():
        raise ValueError("no query has a relevant item: every query's class is missing from the gallery")
    limit = g.shape[0] - (1 if exclude_self else 0)
    k_max = min(max(ks), limit)

    def k_for_chunk(start, stop):
        return min(max(k_max, int(r[start:stop].max())), limit) if rank_metrics else k_max

    hits = np.zeros((q.shape[0], len(ks)), dtype=bool)
    ap = np.zeros(q.shape[0])
    rp = np.zeros(q.shape[0])
    for start, idx, _ in iter_topk(q, g, k_for_chunk, exclude_self=exclude_self, metric=metric,
                                   chunk_size=chunk_size):
        stop = start + idx.shape[0]
        rel = gl[idx] == ql[start:stop, None]
        # 0-based rank of the first hit; "never" when none (also for K > columns)
        first = np.where(rel.any(1), rel.argmax(1), np.iinfo(np.int64).max)
        hits[start:stop] = first[:, None] < np.array(ks)[None, :]
        if rank_metrics:
            rr = np.maximum(r[start:stop], 1)[:, None]
            ranks = np.arange(1, idx.shape[1] + 1)[None, :]
            rel_r = rel & (ranks <= rr)
            precision = np.cumsum(rel_r, axis=1) / ranks
            ap[start:stop] = (precision * rel_r).sum(1) / rr[:, 0]
            rp[start:stop] = rel_r.sum(1) / rr[:, 0]
    out = {f"recall@{k}": float(hits[valid, i].mean()) for i, k in enumerate(ks)}
    if rank_metrics:
        out["map@r"] = float(ap[valid].mean())
        out["r_precision"] = float(rp[valid].mean())
    out["num_queries"] = int(valid.sum())
    return out


def recall_at_k(
    embeddings,
    labels,
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    query_embeddings=None,
    query_labels=None,
    exclude_self: bool = True,
    metric: str = "cosine",
    chunk_size: int | None = None,
) -> dict[int, float]:
    """Recall@K: share of queries with a same-class item among their K nearest.

    All-vs-all by default (the query itself excluded); query-vs-gallery with
    `query_embeddings` / `query_labels`. Only the top max(ks) neighbours of a
    chunk of queries are kept, so memory stays at one (chunk, N) block.

    Returns:
        {k: recall} for every k in `ks`.

    >>> x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype="float32")
    >>> recall_at_k(x, [0, 0, 1, 1], ks=(1,))
    {1: 1.0}
    """
    res = retrieval_metrics(embeddings, labels, ks, query_embeddings=query_embeddings,
                            query_labels=query_labels, exclude_self=exclude_self, rank_metrics=False,
                            metric=metric, chunk_size=chunk_size)
    return {k: res[f"recall@{k}"] for k in _check_ks(ks)}


def map_at_r(embeddings, labels, *, query_embeddings=None, query_labels=None, exclude_self: bool = True,
             metric: str = "cosine", chunk_size: int | None = None) -> float:
    """Mean average precision at R (Musgrave et al. 2020); R = relevant items of the query."""
    return retrieval_metrics(embeddings, labels, (1,), query_embeddings=query_embeddings,
                             query_labels=query_labels, exclude_self=exclude_self, metric=metric,
                             chunk_size=chunk_size)["map@r"]


def r_precision(embeddings, labels, *, query_embeddings=None, query_labels=None, exclude_self: bool = True,
                metric: str = "cosine", chunk_size: int | None = None) -> float:
    """R-precision: relevant items among the top R, over R (Musgrave et al. 2020)."""
    return retrieval_metrics(embeddings, labels, (1,), query_embeddings=query_embeddings,
                             query_labels=query_labels, exclude_self=exclude_self, metric=metric,
                             chunk_size=chunk_size)["r_precision"]


def pairwise_f1(labels, clusters) -> float:
    """F1 over pairs: a pair is predicted positive when both items share a cluster.

    Counts pairs from the (cluster, class) contingency table, O(N + clusters x
    classes), as in the D&C / lifted-structure evaluation:
    TP = sum C(n_ij, 2), TP + FP = sum_i C(n_i., 2), TP + FN = sum_j C(n_.j, 2).
    """
    y = np.asarray(labels)
    c = np.asarray(clusters)
    if y.shape != c.shape or y.ndim != 1:
        raise ValueError(f"`labels` and `clusters` must both have shape (N,), got {y.shape} and {c.shape}")
    _, yi = np.unique(y, return_inverse=True)
    _, ci = np.unique(c, return_inverse=True)
    yi, ci = yi.reshape(-1), ci.reshape(-1)
    n_y = int(yi.max()) + 1
    table = np.bincount(ci.astype(np.int64) * n_y + yi, minlength=(int(ci.max()) + 1) * n_y).astype(np.float64)

    def pairs(n):
        return (n * (n - 1) / 2).sum()

    tp = pairs(table)
    predicted = pairs(np.bincount(ci).astype(np.float64))
    actual = pairs(np.bincount(yi).astype(np.float64))
    if tp == 0:
        return 0.0
    precision, recall = tp / predicted, tp / actual
    return float(2 * precision * recall / (precision + recall))


def nmi_and_f1(embeddings, labels, n_clusters: int | None = None, *, seed: int = 0, niter: int = 100,
               normalize: bool = True) -> tuple[float, float]:
    """NMI and pairwise F1 of k-means with (by default) as many clusters as classes.

    k-means (`tfdnc.clustering.kmeans`) runs on the L2-normalised embeddings
    when `normalize`; NMI is sklearn's `normalized_mutual_info_score`
    (arithmetic mean normalisation).
    """
    from sklearn.metrics import normalized_mutual_info_score

    from tfdnc.clustering import kmeans

    x = check_embeddings(embeddings, "embeddings")
    y = _check_labels(labels, x.shape[0], "labels")
    if n_clusters is None:
        n_clusters = len(np.unique(y))
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    clusters, _ = kmeans(x, n_clusters, niter=niter, seed=seed)
    return float(normalized_mutual_info_score(y, clusters)), pairwise_f1(y, clusters)


def evaluate(
    embeddings,
    labels,
    *,
    ks: Sequence[int] = (1, 2, 4, 8),
    query_embeddings=None,
    query_labels=None,
    metrics: Sequence[str] = ALL_METRICS,
    exclude_self: bool = True,
    metric: str = "cosine",
    chunk_size: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """All metrics of an embedding, as a flat dict of floats.

    Keys: `recall@k` for k in `ks`, `map@r`, `r_precision`, `nmi`, `f1`
    (those asked for in `metrics`). In query-vs-gallery mode NMI and F1
    cluster queries and gallery together.

    >>> evaluate(x, y, ks=(1, 10), metrics=("recall", "nmi"))  # doctest: +SKIP
    {'recall@1': 0.73, 'recall@10': 0.91, 'nmi': 0.68}
    """
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"`metrics` must be among {ALL_METRICS}, got unknown {sorted(unknown)}")
    out: dict[str, float] = {}
    rank = "map@r" in metrics or "r_precision" in metrics
    if "recall" in metrics or rank:
        res = retrieval_metrics(embeddings, labels, ks, query_embeddings=query_embeddings,
                                query_labels=query_labels, exclude_self=exclude_self, rank_metrics=rank,
                                metric=metric, chunk_size=chunk_size)
        for key, value in res.items():
            name = "recall" if key.startswith("recall@") else key
            if name in metrics:
                out[key] = value
    if "nmi" in metrics or "f1" in metrics:
        x, y = embeddings, labels
        if query_embeddings is not None:
            x = np.concatenate([np.asarray(query_embeddings), np.asarray(embeddings)])
            y = np.concatenate([np.asarray(query_labels), np.asarray(labels)])
        nmi, f1 = nmi_and_f1(x, y, seed=seed, normalize=metric == "cosine")
        if "nmi" in metrics:
            out["nmi"] = nmi
        if "f1" in metrics:
            out["f1"] = f1
    return out
