"""Exact k-nearest-neighbour search in chunks, with a fixed tie rule.

Ranking: similarity descending; equal similarities rank the lower gallery
index first (the rule of `tf.math.top_k`, which does the selection). The
similarity is the inner product of L2-normalised vectors for
`metric="cosine"` (the same ranking as Euclidean distance between them),
`-||q - g||^2 + ||q||^2 = 2 q.g - ||g||^2` for `metric="euclidean"` on the
vectors as given, and q.g on the vectors as given for `metric="inner_product"`.

Memory: one (chunk, G) float32 similarity block at a time, plus a copy of
the gallery; the default chunk holds about 64 MB of similarities.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from tfdnc.utils import l2_normalize

METRICS = ("cosine", "euclidean", "inner_product")
_DEFAULT_BLOCK_BYTES = 64 * 2**20


def check_embeddings(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D array (N, D), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` is empty")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"`{name}` contains NaN or infinite values")
    return x


def prepare(x: np.ndarray, metric: str) -> np.ndarray:
    if metric not in METRICS:
        raise ValueError(f"`metric` must be one of {METRICS}, got {metric!r}")
    if metric == "cosine":
        return l2_normalize(x)
    return x


def default_chunk_size(n_gallery: int) -> int:
    return max(1, _DEFAULT_BLOCK_BYTES // (4 * n_gallery))


def iter_topk(
    queries: np.ndarray,
    gallery: np.ndarray,
    k_for_chunk: Callable[[int, int], int],
    *,
    exclude_self: bool = False,
    exclude: np.ndarray | None = None,
    metric: str = "cosine",
    chunk_size: int | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yields (start, indices (b, k), similarities (b, k)) per chunk of queries.

    `k_for_chunk(start, stop)` gives the number of neighbours that chunk
    needs (it may differ per chunk, e.g. MAP@R's largest R in it). With
    `exclude_self`, queries are the gallery and row i never returns item i;
    `exclude[i]` names the one gallery item row i may not return (e.g. the
    query itself when the queries are some gallery rows).
    """
    import tensorflow as tf

    q = prepare(queries, metric)
    # all-vs-all: one normalised copy serves as both (saves N x D floats)
    g = q if gallery is queries else prepare(gallery, metric)
    n_q, n_g = q.shape[0], g.shape[0]
    exclude = _checked_exclude(exclude_self, exclude, n_q, n_g)
    exclude_one = exclude is not None
    chunk_size = _checked_chunk_size(chunk_size, n_g)
    g_t = tf.constant(g)
    sq_norms = tf.constant((g.astype(np.float64) ** 2).sum(1).astype(np.float32)) if metric == "euclidean" else None
    limit = n_g - 1 if exclude_one else n_g
    for start in range(0, n_q, chunk_size):
        stop = min(start + chunk_size, n_q)
        k = int(k_for_chunk(start, stop))
        if not 1 <= k <= limit:
            raise ValueError(f"asked for {k} neighbours but the gallery offers {limit}")
        sims = tf.matmul(q[start:stop], g_t, transpose_b=True)
        if sq_norms is not None:
            sims = 2.0 * sims - sq_norms[None, :]
        values, idx = tf.math.top_k(sims, k=k + 1 if exclude_one else k, sorted=True)
        values, idx = values.numpy(), idx.numpy().astype(np.int64)
        if exclude_one:
            idx, values = _drop_excluded(idx, values, exclude[start:stop])
        yield start, idx, values


def _checked_exclude(exclude_self: bool, exclude, n_q: int, n_g: int) -> np.ndarray | None:
    """The gallery index each query may not return (None: none), from `exclude_self` or `exclude`."""
    if exclude_self and n_q != n_g:
        raise ValueError(f"exclude_self needs queries == gallery, got {n_q} queries and {n_g} gallery items")
    if exclude_self:
        return np.arange(n_q)
    if exclude is None:
        return None
    exclude = np.asarray(exclude, np.int64).reshape(-1)
    if len(exclude) != n_q:
        raise ValueError(f"`exclude` has {len(exclude)} entries for {n_q} queries")
    return exclude


def _checked_chunk_size(chunk_size: int | None, n_gallery: int) -> int:
    if chunk_size is None:
        chunk_size = default_chunk_size(n_gallery)
    if int(chunk_size) < 1:
        raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}")
    return int(chunk_size)


def _drop_excluded(idx: np.ndarray, values: np.ndarray, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top k+1 neighbours (b, k+1) -> top k, without each row's excluded item.

    One extra neighbour was asked for because the query itself is in the
    gallery: it is removed if returned, else the last one is, which leaves the
    top k of everything but the query under the same order.
    """
    drop = idx == excluded[:, None]
    drop[~drop.any(1), -1] = True
    keep = ~drop
    rows, k = idx.shape[0], idx.shape[1] - 1
    return idx[keep].reshape(rows, k), values[keep].reshape(rows, k)

def nearest_neighbors(
    queries,
    gallery=None,
    k: int = 1,
    *,
    exclude: np.ndarray | None = None,
    metric: str = "cosine",
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest gallery items of every query, best first.

    Without `gallery`, searches `queries` against themselves, excluding
    each query itself. `exclude[i]` is a gallery index query i may not
    return (e.g. itself, when the queries are some of the gallery's rows).

    Returns:
        (indices int64 (Q, k), similarities float32 (Q, k)).

    Examples:
        >>> x = np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype="float32")
        >>> nearest_neighbors(x, k=1)[0].ravel().tolist()
        [1, 0, 1]
    """
    q = check_embeddings(queries, "queries")
    exclude_self = gallery is None
    g = q if exclude_self else check_embeddings(gallery, "gallery")
    if g.shape[1] != q.shape[1]:
        raise ValueError(f"`gallery` has dimension {g.shape[1]}, `queries` {q.shape[1]}")
    idx = np.empty((q.shape[0], k), dtype=np.int64)
    sims = np.empty((q.shape[0], k), dtype=np.float32)
    for start, i, s in iter_topk(q, g, lambda a, b: k, exclude_self=exclude_self, exclude=exclude, metric=metric,
                                 chunk_size=chunk_size):
        idx[start:start + len(i)] = i
        sims[start:start + len(i)] = s
    return idx, sims
