"""Clustering for Divide & Conquer: k-means, the TPAMI constraint, identity, growth.

Every `T` epochs the training set is re-embedded and re-clustered
(`cluster_balanced`), the new clusters inherit the ids of the old ones they
overlap most (`match_clusters`), or, while K grows, every cluster is split
in two (`split_clusters`). Images whose class has a single image in their
cluster are left out until the next re-clustering (`usable_mask`).

The constraint (TPAMI): every cluster holds at least `min_classes` classes
with at least `min_images` images each, so that every cluster can form
class-balanced batches with positives and negatives. k-means is retried with
a new seed (up to `max_retries` times) until it holds. If no try satisfies it,
the default (`on_failure="repair"`) keeps the best try and moves whole
classes into the clusters that lack them, with a warning: a run hundreds of
epochs long should neither die at a re-clustering nor train a learner on a
cluster that cannot form a batch. The repair only fails (with
`ClusteringError`) when K is impossible, and that is checked up front.

Example:

```python
assignments = cluster_balanced(features, labels, k=8, seed=epoch)
ids = match_clusters(assignments, previous, k_new=8, k_old=8)
assignments = ids[assignments]          # new cluster i takes old id ids[i]
keep = usable_mask(assignments, labels)  # images the sampler may draw
children = split_clusters(features, labels, assignments, k=8)  # K = 16
```
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from tfdnc.utils import l2_normalize

__all__ = [
    "ClusteringError",
    "ClusterStats",
    "kmeans",
    "cluster_balanced",
    "cluster_stats",
    "usable_mask",
    "matching_cost",
    "match_clusters",
    "split_clusters",
    "max_feasible_k",
]

BACKENDS = ("auto", "faiss", "sklearn")
ON_FAILURE = ("repair", "best", "raise")


class ClusteringError(ValueError):
    """A clustering request that cannot be satisfied (impossible K, failed constraint)."""


class ClusterStats(NamedTuple):
    """Per-cluster counts: images, classes, and classes with >= `min_images` images."""

    sizes: np.ndarray  # (k,) images per cluster
    classes: np.ndarray  # (k,) distinct classes per cluster
    usable_classes: np.ndarray  # (k,) classes with >= min_images images in the cluster

    def describe(self) -> str:
        return ", ".join(
            f"{c}: {int(n)} images / {int(u)} usable of {int(m)} classes"
            for c, (n, m, u) in enumerate(zip(self.sizes, self.classes, self.usable_classes))
        )


# --------------------------------------------------------------------------- validation


def _check_features(features, name: str = "features") -> np.ndarray:
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D array (N, D), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"`{name}` must be non-empty, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x).all(axis=1)).sum())
        raise ValueError(f"`{name}` contains NaN or infinite values in {bad} rows")
    return x


def _check_labels(labels, n: int, name: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"`{name}` must have shape ({n},) to match the features, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"`{name}` must hold integer class ids, got dtype {y.dtype}")
    return y


def _check_assignments(assignments, k: int, n: int | None = None, name: str = "assignments") -> np.ndarray:
    a = np.asarray(assignments)
    if a.ndim != 1 or (n is not None and a.shape[0] != n):
        want = f"({n},)" if n is not None else "(N,)"
        raise ValueError(f"`{name}` must have shape {want}, got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"`{name}` must hold integer cluster ids, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= k):
        raise ValueError(f"`{name}` must hold cluster ids in [0, {k}), got range [{a.min()}, {a.max()}]")
    return a.astype(np.int64, copy=False)


def _check_k(k, n: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"`{name}` must be an int, got {k!r}")
    if k < 1:
        raise ValueError(f"`{name}` must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"`{name}` ({k}) cannot exceed the number of points ({n})")
    return int(k)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    # einsum: no N x D temporary (np.linalg.norm squares a copy of x).
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    if np.all(np.abs(norms - 1.0) < 1e-4):
        # Already unit rows (the schedule's features): skip the N x D copy,
        # 2 GB at 1,000,000 x 512.
        return x
    return l2_normalize(x, dtype=x.dtype)


# --------------------------------------------------------------------------- k-means


# Why faiss could not be imported (for the fallback warning), and whether
# that warning was shown: once per process, not once per k-means call.
_faiss_import_error: str | None = None
_fallback_warned = False


def _faiss():
    """The faiss module, or None when it cannot be imported."""
    global _faiss_import_error
    try:
        import faiss
    except ImportError as exc:  # faiss-cpu is a dependency; sklearn is the fallback
        _faiss_import_error = str(exc) or type(exc).__name__
        return None
    return faiss


def _warn_sklearn_fallback():
    """Says once per process that backend="auto" k-means runs on scikit-learn."""
    global _fallback_warned
    if _fallback_warned:
        return
    _fallback_warned = True
    reason = f" ({_faiss_import_error})" if _faiss_import_error else ""
    warnings.warn(
        f"[tfdnc] faiss cannot be imported{reason}; k-means (re-clustering, NMI / F1) falls back "
        "to scikit-learn, which is slower on large sets. `pip install faiss-cpu` to use faiss "
        "(this warning is shown once per process).",
        RuntimeWarning,
        stacklevel=3,
    )


def kmeans(
    features: np.ndarray,
    k: int,
    *,
    niter: int = 100,
    seed: int = 0,
    spherical: bool = False,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """k-means on all points (no subsampling); deterministic for a seed.

    Args:
        features: (N, D) float array.
        k: number of clusters, 1 <= k <= N.
        niter: Lloyd iterations.
        seed: random seed of the initialisation.
        spherical: cosine k-means: rows are L2-normalised first and the
            centroids are kept on the unit sphere.
        backend: "auto" (default: faiss when importable, else scikit-learn,
            with a `RuntimeWarning` once per process), "faiss" (an error
            without it) or "sklearn".

    Returns:
        (assignments int64 (N,), centroids float32 (k, D)); every point is
        assigned to its nearest returned centroid (largest inner product when
        spherical).

    Examples:

        >>> rng = np.random.default_rng(0)
        >>> x = np.r_[np.zeros((5, 2)), np.ones((5, 2))] + 0.01 * rng.normal(size=(10, 2))
        >>> a, c = kmeans(x, 2)
        >>> len(set(a[:5])), len(set(a[5:])), bool(a[0] != a[5])
        (1, 1, True)
    """
    x = _check_features(features)
    n, d = x.shape
    k = _check_k(k, n)
    if int(niter) < 1:
        raise ValueError(f"`niter` must be >= 1, got {niter}")
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}")
    if spherical:
        x = _l2_normalize(x)
    faiss = _faiss() if backend in ("auto", "faiss") else None
    if backend == "faiss" and faiss is None:
        raise ValueError("`backend='faiss'` but faiss is not installed (pip install faiss-cpu)")
    if backend == "auto" and faiss is None:
        _warn_sklearn_fallback()
    if faiss is not None:
        return _kmeans_faiss(faiss, x, k, int(niter), int(seed), bool(spherical))
    return _kmeans_sklearn(x, k, int(niter), int(seed), bool(spherical))


def _kmeans_faiss(faiss, x, k, niter, seed, spherical):
    n, d = x.shape
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        seed=seed,
        spherical=spherical,
        # faiss trains on at most 256 points per centroid by default and
        # silently subsamples the rest; the method clusters every image.
        max_points_per_centroid=max(256, -(-n // k) + 1),
        # ... and warns below 39 points per centroid; tiny test sets are fine.
        min_points_per_centroid=1,
        verbose=False,
    )
    km.train(x)
    _, idx = km.index.search(x, 1)
    return idx[:, 0].astype(np.int64), np.asarray(km.centroids, dtype=np.float32).reshape(k, d)


def _kmeans_sklearn(x, k, niter, seed, spherical):
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=1, max_iter=niter, random_state=seed, algorithm="lloyd")
    km.fit(x)
    centroids = km.cluster_centers_.astype(np.float32)
    if spherical:
        # Lloyd on unit vectors; projecting the means back onto the sphere
        # and assigning by inner product makes the result a cosine clustering.
        centroids = _l2_normalize(centroids)
        return np.argmax(x @ centroids.T, axis=1).astype(np.int64), centroids
    return km.predict(x).astype(np.int64), centroids


# --------------------------------------------------------------------------- constraint


def _contingency(assignments: np.ndarray, class_idx: np.ndarray, k: int, c: int) -> np.ndarray:
    """(k, c) counts of images per (cluster, class); O(N) with bincount."""
    return np.bincount(assignments * c + class_idx, minlength=k * c).reshape(k, c)


def cluster_stats(assignments, labels, k: int, *, min_images: int = 2) -> ClusterStats:
    """Images, classes, and usable classes (>= `min_images` images) per cluster."""
    y = np.asarray(labels)
    a = _check_assignments(assignments, k, y.shape[0])
    _, class_idx = np.unique(y, return_inverse=True)
    table = _contingency(a, class_idx.reshape(-1), k, int(class_idx.max()) + 1 if y.size else 1)
    return ClusterStats(table.sum(1), (table > 0).sum(1), (table >= min_images).sum(1))


def max_feasible_k(labels, *, min_classes: int = 2, min_images: int = 2) -> int:
    """The largest K for which every cluster can hold `min_classes` usable classes."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return int((counts >= min_images).sum()) // min_classes


def _check_feasible(labels, k, min_classes, min_images, who):
    _, counts = np.unique(labels, return_counts=True)
    n_ok = int((counts >= min_images).sum())
    if n_ok < k * min_classes:
        raise ClusteringError(
            f"{who}: K={k} is impossible: every cluster needs >= {min_classes} classes with "
            f">= {min_images} images, i.e. {k * min_classes} such classes, but only {n_ok} of "
            f"{len(counts)} classes have >= {min_images} images, which allows "
            f"K <= {n_ok // min_classes}."
        )


def usable_mask(assignments, labels, *, min_images: int = 2) -> np.ndarray:
    """Images the sampler may draw: those whose class has >= `min_images` in their cluster.

    A class with a single image inside a cluster cannot give that image a
    positive, so the image is dropped until the next re-clustering.

    Examples:
        >>> usable_mask(np.array([0, 0, 1, 1]), np.array([5, 5, 5, 7]))
        array([ True,  True, False, False])
    """
    y = np.asarray(labels)
    a = np.asarray(assignments)
    if a.ndim != 1 or y.shape != a.shape:
        raise ValueError(
            f"`assignments` and `labels` must both have shape (N,), got {a.shape} and {y.shape}"
        )
    if a.size == 0:
        return np.zeros(0, dtype=bool)
    _, cluster_idx = np.unique(a, return_inverse=True)
    _, class_idx = np.unique(y, return_inverse=True)
    key = cluster_idx.reshape(-1).astype(np.int64) * (int(class_idx.max()) + 1) + class_idx.reshape(-1)
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)] >= min_images


def _repair(x, class_idx, assignments, k, min_classes, min_images, centroids=None):
    """Moves whole classes into clusters short of usable classes, in place.

    A candidate for a deficient cluster j is a class with >= `min_images`
    images that is not usable in j and not usable in any cluster that is at
    exactly `min_classes` (it would become deficient). While K is feasible a
    candidate always exists: the excluded classes number at most
    min_classes * (k - 1) + (min_classes - 1) < k * min_classes. Each move adds
    one usable class to j and leaves every other cluster at >= min_classes,
    so the loop ends after at most k * min_classes moves. Among candidates the
    class with most images already in j wins, then the class whose mean is
    nearest to cluster j's centroid.
    """
    c = int(class_idx.max()) + 1
    totals = np.bincount(class_idx, minlength=c)
    class_means = None
    moved = 0
    while True:
        table = _contingency(assignments, class_idx, k, c)
        usable = table >= min_images
        n_usable = usable.sum(1)
        short = np.flatnonzero(n_usable < min_classes)
        if short.size == 0:
            return moved
        j = short[np.argmin(n_usable[short])]
        locked = (n_usable <= min_classes) & (np.arange(k) != j)
        cand = (totals >= min_images) & ~usable[j] & ~usable[locked].any(0)
        cand = np.flatnonzero(cand)
        if cand.size == 0:  # unreachable while K is feasible; kept as a guard
            raise ClusteringError(f"cannot repair cluster {j}: no class can move into it")
        if class_means is None:
            from scipy import sparse

            onehot = sparse.csr_matrix(
                (np.ones(len(class_idx)), (class_idx, np.arange(len(class_idx)))), shape=(c, len(class_idx))
            )
            class_means = np.asarray(onehot @ x, dtype=np.float64) / totals[:, None]
        member = assignments == j
        if centroids is not None:
            center = centroids[j]
        elif member.any():
            center = x[member].mean(0)
        else:
            center = x.mean(0)
        dist = ((class_means[cand] - center) ** 2).sum(1)
        best = cand[np.lexsort((dist, -table[j, cand]))[0]]
        assignments[class_idx == best] = j
        moved += 1


def _kmeans_tries(x, class_idx, k, seed, niter, max_retries, min_classes, min_images, spherical, backend):
    """k-means with seeds seed, seed + 1, ... until every cluster holds `min_classes` usable classes.

    Returns (assignments, centroids, True) for the first such try, else the
    best try (fewest missing usable classes summed over the clusters) and False.
    """
    c = int(class_idx.max()) + 1
    best = None  # (score, assignments, centroids)
    for attempt in range(int(max_retries)):
        a, centroids = kmeans(x, k, niter=niter, seed=seed + attempt, spherical=spherical, backend=backend)
        n_usable = (_contingency(a, class_idx, k, c) >= min_images).sum(1)
        if n_usable.min() >= min_classes:
            return a, centroids, True
        score = int(np.minimum(n_usable - min_classes, 0).sum())
        if best is None or score > best[0]:
            best = (score, a, centroids)
    return best[1], best[2], False


def cluster_balanced(
    features: np.ndarray,
    labels: np.ndarray,
    k: int,
    *,
    niter: int = 100,
    seed: int = 0,
    max_retries: int = 30,
    min_classes: int = 2,
    min_images: int = 2,
    spherical: bool = False,
    on_failure: str = "repair",
    backend: str = "auto",
) -> np.ndarray:
    """k-means retried (seeds `seed`, `seed + 1`, ...) until every cluster is trainable.

    Trainable: at least `min_classes` classes with at least `min_images`
    images inside the cluster (TPAMI: 2 x 2, up to 30 tries).

    Args:
        features: (N, D) clustering features (the reference code uses the
            L2-normalised penultimate backbone features).
        labels: (N,) integer class ids.
        k: number of clusters.
        on_failure: what to do when no try satisfies the constraint:
            "repair" (default): keep the best try and move whole classes
            into the deficient clusters (warns); "best": return the best try
            as it is (warns); "raise": raise `ClusteringError` with the best
            try's per-cluster stats.

    Returns:
        int64 (N,) cluster ids in [0, k).

    Raises:
        ClusteringError: up front when fewer than `k * min_classes` classes
            have `min_images` images (the message says which K is possible),
            or with `on_failure="raise"` when every try fails.

    Examples:

        >>> a = cluster_balanced(features, labels, k=4, seed=3)  # doctest: +SKIP
    """
    x = _check_features(features)
    y = _check_labels(labels, x.shape[0])
    k = _check_k(k, x.shape[0])
    if on_failure not in ON_FAILURE:
        raise ValueError(f"`on_failure` must be one of {ON_FAILURE}, got {on_failure!r}")
    if int(max_retries) < 1:
        raise ValueError(f"`max_retries` must be >= 1, got {max_retries}")
    _check_feasible(y, k, min_classes, min_images, "cluster_balanced")
    if spherical:
        x = _l2_normalize(x)
    _, class_idx = np.unique(y, return_inverse=True)
    class_idx = class_idx.reshape(-1)
    a, centroids, ok = _kmeans_tries(x, class_idx, k, seed, niter, max_retries, min_classes, min_images,
                                     spherical, backend)
    if ok:
        return a
    stats = cluster_stats(a, y, k, min_images=min_images)
    msg = (
        f"cluster_balanced: none of {max_retries} k-means tries (seeds {seed}..{seed + max_retries - 1}) "
        f"gave every one of the K={k} clusters >= {min_classes} classes with >= {min_images} images; "
        f"best try: {stats.describe()}"
    )
    if on_failure == "raise":
        raise ClusteringError(msg)
    if on_failure == "best":
        warnings.warn(msg + "; returning it as is", RuntimeWarning, stacklevel=2)
        return a
    a = a.copy()
    moved = _repair(x, class_idx, a, k, min_classes, min_images, centroids)
    warnings.warn(msg + f"; repaired it by moving {moved} whole classes", RuntimeWarning, stacklevel=2)
    return a


# --------------------------------------------------------------------------- identity


def matching_cost(new_assignments, old_assignments, k_new: int, k_old: int) -> np.ndarray:
    """(k_new, k_old) sizes of the symmetric differences of the member sets.

    |A_i ^ B_j| = |A_i| + |B_j| - 2 |A_i & B_j|, with the intersections read
    off a contingency table: O(N + k_new * k_old), not O(N) Python sets.
    """
    new = _check_assignments(new_assignments, k_new, name="new_assignments")
    old = _check_assignments(old_assignments, k_old, new.shape[0], name="old_assignments")
    inter = np.bincount(new * k_old + old, minlength=k_new * k_old).reshape(k_new, k_old)
    return inter.sum(1)[:, None] + inter.sum(0)[None, :] - 2 * inter


def match_clusters(new_assignments, old_assignments, k_new: int, k_old: int | None = None) -> np.ndarray:
    """Ids that keep learner identity across a re-clustering (Hungarian matching).

    New cluster i takes old id `mapping[i]`, chosen to minimise the total
    symmetric difference of member sets (`scipy.optimize.linear_sum_assignment`).
    When `k_new > k_old` the unmatched new clusters take the free ids
    `k_old .. k_new - 1` in order; `k_new < k_old` is refused because the
    ids must stay in [0, k_new).

    Returns:
        int64 (k_new,) permutation of range(k_new); relabel with `mapping[new_assignments]`.

    Examples:
        >>> old = np.array([0, 0, 1, 1, 2, 2])
        >>> match_clusters(np.array([2, 2, 0, 0, 1, 1]), old, 3, 3)
        array([1, 2, 0])
    """
    from scipy.optimize import linear_sum_assignment

    k_old = k_new if k_old is None else k_old
    if k_new < k_old:
        raise ValueError(
            f"match_clusters: `k_new` ({k_new}) < `k_old` ({k_old}): ids must stay in [0, k_new); "
            "after a split, children 2c and 2c+1 inherit cluster c instead"
        )
    cost = matching_cost(new_assignments, old_assignments, k_new, k_old)
    rows, cols = linear_sum_assignment(cost)
    mapping = np.full(k_new, -1, dtype=np.int64)
    mapping[rows] = cols
    unmatched = mapping < 0
    mapping[unmatched] = np.arange(k_old, k_new)
    return mapping


# --------------------------------------------------------------------------- growth


def _class_level_split(x, class_idx, a2, centroids, min_classes, min_images):
    """Splits a cluster by whole classes so that both halves keep >= min_classes.

    Classes are ordered by how much nearer their images are, on average, to
    centroid 0 than to centroid 1 of the best 2-means try; the first n0
    usable classes go to child 0 with n0 = the 2-means count clipped to
    [min_classes, n_usable - min_classes]. Other classes follow their side.
    """
    d0 = ((x - centroids[0]) ** 2).sum(1)
    d1 = ((x - centroids[1]) ** 2).sum(1)
    classes, inv, counts = np.unique(class_idx, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    score = np.bincount(inv, weights=d0 - d1) / counts  # < 0: nearer centroid 0
    usable = counts >= min_images
    u = np.flatnonzero(usable)
    order = u[np.lexsort((u, score[u]))]
    n0 = int(np.clip((score[u] < 0).sum(), min_classes, len(u) - min_classes))
    side = (score >= 0).astype(np.int64)
    side[order[:n0]] = 0
    side[order[n0:]] = 1
    return side[inv]


def split_clusters(
    features: np.ndarray,
    labels: np.ndarray,
    assignments: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    niter: int = 100,
    max_retries: int = 30,
    min_classes: int = 2,
    min_images: int = 2,
    spherical: bool = False,
    backend: str = "auto",
) -> np.ndarray:
    """TPAMI growth: every cluster c is split by 2-means into 2c and 2c + 1 (K doubles).

    Per cluster, 2-means is retried (new seed each try) until both children
    hold `min_classes` classes with `min_images` images. If no try does:

    - a cluster with >= 2 * min_classes usable classes is split by whole
      classes along the best try's centroids (`_class_level_split`), so both
      children satisfy the constraint and stay subsets of the parent;
    - otherwise (a class can be usable in both children only if it has
      2 * min_images images there, so fewer classes may still split) its
      best split is kept and then whole classes are moved in from other
      clusters with classes to spare (the repair of `cluster_balanced`),
      with a warning. Only then can a child hold images from outside its
      parent.

    Returns:
        int64 (N,) ids in [0, 2k); the images of cluster c go to 2c or 2c + 1.

    Raises:
        ClusteringError: when 2k clusters are impossible for these labels.
    """
    x = _check_features(features)
    y = _check_labels(labels, x.shape[0])
    k = _check_k(k, x.shape[0])
    a = _check_assignments(assignments, k, x.shape[0])
    _check_feasible(y, 2 * k, min_classes, min_images, "split_clusters")
    if spherical:
        x = _l2_normalize(x)
    _, class_idx = np.unique(y, return_inverse=True)
    class_idx = class_idx.reshape(-1)
    out = np.empty_like(a)
    short = []
    for c in range(k):
        members = np.flatnonzero(a == c)
        out[members] = 2 * c + _split_one(
            x[members], class_idx[members], seed + c * int(max_retries), niter, max_retries,
            min_classes, min_images, spherical, backend, short, c,
        )
    if short:
        moved = _repair(x, class_idx, out, 2 * k, min_classes, min_images)
        warnings.warn(
            f"split_clusters: no 2-means try split clusters {short} into two children with "
            f">= {min_classes} classes of >= {min_images} images, and they have fewer than "
            f"{2 * min_classes} such classes for a class-level split; moved {moved} whole classes "
            "in from other clusters",
            RuntimeWarning,
            stacklevel=2,
        )
    return out


def _split_one(x, class_idx, seed, niter, max_retries, min_classes, min_images, spherical, backend, short, c):
    """Child (0 or 1) of every member of one cluster."""
    if x.shape[0] < 2:
        short.append(c)
        return np.zeros(x.shape[0], dtype=np.int64)
    n_usable_parent = int((np.unique(class_idx, return_counts=True)[1] >= min_images).sum())
    a2, centroids, ok = _kmeans_tries(x, class_idx, 2, seed, niter, max_retries, min_classes, min_images,
                                      spherical, backend)
    if ok:
        return a2
    if n_usable_parent >= 2 * min_classes:
        return _class_level_split(x, class_idx, a2, centroids, min_classes, min_images)
    short.append(c)
    return a2
