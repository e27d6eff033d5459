"""Balanced clustering: k-means retried until every cluster can form class-balanced batches (TPAMI).

The constraint: every cluster holds at least `min_classes` classes with at
least `min_images` images each, so that every cluster can form
class-balanced batches with positives and negatives. k-means is retried with
a new seed (up to `max_retries` times) until it holds. If no try satisfies it,
the default (`on_failure="repair"`) keeps the best try and moves whole
classes into the clusters that lack them, with a warning: a run hundreds of
epochs long should neither die at a re-clustering nor train a learner on a
cluster that cannot form a batch. The repair only fails (with
`ClusteringError`) when K is impossible, and that is checked up front.
Images whose class has a single image in their cluster are left out until
the next re-clustering (`usable_mask`).

Example:

```python
assignments = cluster_balanced(features, labels, k=8, seed=epoch)
keep = usable_mask(assignments, labels)  # images the sampler may draw
```
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from tfdnc.clustering.backends import kmeans
from tfdnc.clustering.validation import (ClusteringError, check_assignments, check_features, check_k,
                                         check_labels)
from tfdnc.utils import l2_normalize

ON_FAILURE = ("repair", "best", "raise")


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



def _contingency(assignments: np.ndarray, class_idx: np.ndarray, k: int, c: int) -> np.ndarray:
    """(k, c) counts of images per (cluster, class); O(N) with bincount."""
    return np.bincount(assignments * c + class_idx, minlength=k * c).reshape(k, c)


def cluster_stats(assignments, labels, k: int, *, min_images: int = 2) -> ClusterStats:
    """Images, classes, and usable classes (>= `min_images` images) per cluster."""
    y = np.asarray(labels)
    a = check_assignments(assignments, k, y.shape[0])
    _, class_idx = np.unique(y, return_inverse=True)
    table = _contingency(a, class_idx.reshape(-1), k, int(class_idx.max()) + 1 if y.size else 1)
    return ClusterStats(table.sum(1), (table > 0).sum(1), (table >= min_images).sum(1))


def max_feasible_k(labels, *, min_classes: int = 2, min_images: int = 2) -> int:
    """The largest K for which every cluster can hold `min_classes` usable classes."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return int((counts >= min_images).sum()) // min_classes


def check_feasible(labels, k, min_classes, min_images, who):
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


def repair(x, class_idx, assignments, k, min_classes, min_images, centroids=None):
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


def kmeans_tries(x, class_idx, k, seed, niter, max_retries, min_classes, min_images, spherical, backend):
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
    x = check_features(features)
    y = check_labels(labels, x.shape[0])
    k = check_k(k, x.shape[0])
    if on_failure not in ON_FAILURE:
        raise ValueError(f"`on_failure` must be one of {ON_FAILURE}, got {on_failure!r}")
    if int(max_retries) < 1:
        raise ValueError(f"`max_retries` must be >= 1, got {max_retries}")
    check_feasible(y, k, min_classes, min_images, "cluster_balanced")
    if spherical:
        x = l2_normalize(x)
    _, class_idx = np.unique(y, return_inverse=True)
    class_idx = class_idx.reshape(-1)
    a, centroids, ok = kmeans_tries(x, class_idx, k, seed, niter, max_retries, min_classes, min_images,
                                     spherical, backend)
    if ok:
        return a
    return _when_every_try_failed(x, y, class_idx, a, centroids, k, seed, max_retries, min_classes, min_images,
                                  on_failure)


def _when_every_try_failed(x, y, class_idx, a, centroids, k, seed, max_retries, min_classes, min_images,
                           on_failure):
    """`cluster_balanced`'s best try when none met the constraint: raised, returned or repaired (`on_failure`)."""
    stats = cluster_stats(a, y, k, min_images=min_images)
    msg = (
        f"cluster_balanced: none of {max_retries} k-means tries (seeds {seed}..{seed + max_retries - 1}) "
        f"gave every one of the K={k} clusters >= {min_classes} classes with >= {min_images} images; "
        f"best try: {stats.describe()}"
    )
    if on_failure == "raise":
        raise ClusteringError(msg)
    if on_failure == "best":
        warnings.warn(msg + "; returning it as is", RuntimeWarning, stacklevel=3)
        return a
    a = a.copy()
    moved = repair(x, class_idx, a, k, min_classes, min_images, centroids)
    warnings.warn(msg + f"; repaired it by moving {moved} whole classes", RuntimeWarning, stacklevel=3)
    return a
