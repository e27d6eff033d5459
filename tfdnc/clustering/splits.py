"""TPAMI growth: every cluster split in two by 2-means, so K doubles.

Example:

```python
children = split_clusters(features, labels, assignments, k=8)  # K = 16; cluster c -> 2c, 2c + 1
```
"""

from __future__ import annotations

import warnings

import numpy as np

from tfdnc.clustering.balanced import check_feasible, kmeans_tries, repair
from tfdnc.clustering.validation import check_assignments, check_features, check_k, check_labels
from tfdnc.utils import l2_normalize


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
    x = check_features(features)
    y = check_labels(labels, x.shape[0])
    k = check_k(k, x.shape[0])
    a = check_assignments(assignments, k, x.shape[0])
    check_feasible(y, 2 * k, min_classes, min_images, "split_clusters")
    if spherical:
        x = l2_normalize(x)
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
        _repair_short(x, class_idx, out, k, short, min_classes, min_images)
    return out


def _repair_short(x, class_idx, out, k, short, min_classes, min_images) -> None:
    """Moves whole classes into the children of the `short` clusters (in place), with a warning."""
    moved = repair(x, class_idx, out, 2 * k, min_classes, min_images)
    warnings.warn(
        f"split_clusters: no 2-means try split clusters {short} into two children with "
        f">= {min_classes} classes of >= {min_images} images, and they have fewer than "
        f"{2 * min_classes} such classes for a class-level split; moved {moved} whole classes "
        "in from other clusters",
        RuntimeWarning,
        stacklevel=3,
    )


def _split_one(x, class_idx, seed, niter, max_retries, min_classes, min_images, spherical, backend, short, c):
    """Child (0 or 1) of every member of one cluster."""
    if x.shape[0] < 2:
        short.append(c)
        return np.zeros(x.shape[0], dtype=np.int64)
    n_usable_parent = int((np.unique(class_idx, return_counts=True)[1] >= min_images).sum())
    a2, centroids, ok = kmeans_tries(x, class_idx, 2, seed, niter, max_retries, min_classes, min_images,
                                      spherical, backend)
    if ok:
        return a2
    if n_usable_parent >= 2 * min_classes:
        return _class_level_split(x, class_idx, a2, centroids, min_classes, min_images)
    short.append(c)
    return a2
