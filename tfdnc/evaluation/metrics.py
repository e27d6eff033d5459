"""Retrieval and clustering metrics of an embedding: Recall@K, MAP@R, mARP, R-precision, NMI, F1.

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

mARP (key `marp`) is the "MAP@R" that the TPAMI Divide & Conquer code
prints as mARP: the same sum over the top R, but divided by the number of
hits among the top R instead of by R (CompVis/metric-learning-divide-and-
conquer-improved: metriclearning/evaluation/mean_avg_precision.py:14, called
on the top R by mean_avg_R_precision, lines 46-49). A query with no hit in
its top R scores 0 there (line 14) and still counts in the mean (line 19);
tfdnc does the same. So mARP >= MAP@R, equal only when every top R is all
hits or all misses. Papers that cite "MAP@R" from Musgrave et al. mean
`map@r`; the D&C TPAMI tables mean `marp`.

Example:

```python
results = compute_metrics(test_embeddings, test_labels)   # {'recall@1': ..., 'nmi': ...}
recalls = recall_at_k(gallery, gallery_labels, ks=(1, 10, 20),
                      query_embeddings=queries, query_labels=query_labels)
```
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tfdnc.evaluation.neighbors import check_embeddings, iter_topk
from tfdnc.utils import l2_normalize

ALL_METRICS = ("recall", "map@r", "marp", "r_precision", "nmi", "f1")
RANK_METRICS = ("map@r", "marp", "r_precision")


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


def relevant_counts(query_labels, gallery_labels, exclude_self: bool) -> np.ndarray:
    """R per query: gallery items of its class (minus itself when in the gallery); 0 leaves it out of every metric."""
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
    """Recall@K (and MAP@R, mARP, R-precision) in one chunked pass over the gallery.

    Returns:
        dict with `recall@k` for every k, `map@r`, `marp` and `r_precision`
        when `rank_metrics`, and `num_queries` (queries with >= 1 relevant
        item; the others are left out of every metric, mARP included).
    """
    q, ql, g, gl, exclude_self = _setup(embeddings, labels, query_embeddings, query_labels, exclude_self)
    ks = _check_ks(ks)
    r = relevant_counts(ql, gl, exclude_self)
    valid = r > 0
    if not valid.any():
        raise ValueError("no query has a relevant item: every query's class is missing from the gallery")
    limit = g.shape[0] - (1 if exclude_self else 0)
    k_max = min(max(ks), limit)

    def k_for_chunk(start, stop):
        return min(max(k_max, int(r[start:stop].max())), limit) if rank_metrics else k_max

    hits = np.zeros((q.shape[0], len(ks)), dtype=bool)
    ap = np.zeros(q.shape[0])
    arp = np.zeros(q.shape[0])
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
            summed = (precision * rel_r).sum(1)
            n_hits = rel_r.sum(1)
            ap[start:stop] = summed / rr[:, 0]
            # mARP: over the hits in the top R, 0 without any (see the module docstring)
            arp[start:stop] = np.where(n_hits > 0, summed / np.maximum(n_hits, 1), 0.0)
            rp[start:stop] = n_hits / rr[:, 0]
    out = {f"recall@{k}": float(hits[valid, i].mean()) for i, k in enumerate(ks)}
    if rank_metrics:
        out["map@r"] = float(ap[valid].mean())
        out["marp"] = float(arp[valid].mean())
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

    Examples:
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
    """Mean average precision at R (Musgrave et al. 2020); R = relevant items of the query.

    The sum of precisions at the hits among the top R is divided by R (as in
    pytorch-metric-learning); see `marp` for the TPAMI D&C code's variant,
    which divides it by the number of those hits.
    """
    return retrieval_metrics(embeddings, labels, (1,), query_embeddings=query_embeddings,
                             query_labels=query_labels, exclude_self=exclude_self, metric=metric,
                             chunk_size=chunk_size)["map@r"]


def marp(embeddings, labels, *, query_embeddings=None, query_labels=None, exclude_self: bool = True,
         metric: str = "cosine", chunk_size: int | None = None) -> float:
    """mARP of the D&C TPAMI code: MAP@R's sum over the top R divided by its hits, not by R.

    Per query, with R the relevant gallery items and rel(i) the hits among
    the top R: sum_{i<=R} P@i * rel(i) / sum_{i<=R} rel(i), and 0 when the
    top R holds no hit; the mean is over all queries with R >= 1. This is
    `average_precision` applied to the top R in CompVis/metric-learning-
    divide-and-conquer-improved: metriclearning/evaluation/mean_avg_precision.py:14
    (via `mean_avg_R_precision`, lines 25-49), the "mARP" the authors report
    (metriclearning/utils.py:234). Departure: the reference also averages in,
    as 0, all-vs-all queries of a singleton class (R = 0), and fails with a
    KeyError on a query class missing from the gallery (line 47); tfdnc leaves
    such queries out, as for every retrieval metric. Always >= `map_at_r`.

    Examples:
        >>> angles = np.deg2rad([0, 10, 90, 25])  # class 0, 0, 0, 1 on the unit circle
        >>> x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        >>> # R = 2; top 2 of the queries: (hit, miss), (hit, miss), (miss, hit)
        >>> round(map_at_r(x, [0, 0, 0, 1]), 4), round(marp(x, [0, 0, 0, 1]), 4)
        (0.4167, 0.8333)
    """
    return retrieval_metrics(embeddings, labels, (1,), query_embeddings=query_embeddings,
                             query_labels=query_labels, exclude_self=exclude_self, metric=metric,
                             chunk_size=chunk_size)["marp"]


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
        x = l2_normalize(x)
    clusters, _ = kmeans(x, n_clusters, niter=niter, seed=seed)
    return float(normalized_mutual_info_score(y, clusters)), pairwise_f1(y, clusters)


def compute_metrics(
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

    Keys: `recall@k` for k in `ks`, `map@r`, `marp`, `r_precision`, `nmi`,
    `f1` (those asked for in `metrics`; `map@r` is Musgrave et al.'s MAP@R,
    `marp` the D&C TPAMI code's mARP, see the module docstring). In
    query-vs-gallery mode NMI and F1 cluster queries and gallery together.

    Examples:
        >>> compute_metrics(x, y, ks=(1, 10), metrics=("recall", "nmi"))  # doctest: +SKIP
        {'recall@1': 0.73, 'recall@10': 0.91, 'nmi': 0.68}
    """
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"`metrics` must be among {ALL_METRICS}, got unknown {sorted(unknown)}")
    out: dict[str, float] = {}
    rank = any(m in metrics for m in RANK_METRICS)
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
