"""Re-clustering the training set: features from the model, then new cluster ids.

A re-clusterer has two steps, which the schedule calls in this order:

- `features(model)`: the L2-normalised clustering features of every training
  image (backbone "penultimate" features, or the embedding), or None on a
  worker that does not cluster;
- `assign(features, labels, current, ...)`: the new assignment, the same on
  every worker.

`LocalReclusterer` does both in this process. The multi-worker version,
`tfdnc.distributed.recluster.DistributedReclusterer`, embeds a shard per
worker, clusters on the chief and broadcasts; the schedule is given one or
the other. Both cluster with `plan_assignments`.

Examples:
    >>> reclusterer = LocalReclusterer(train_set, image_size=32)  # doctest: +SKIP
    >>> features = reclusterer.features(model)  # doctest: +SKIP
    >>> new = reclusterer.assign(features, train_set.labels, current, current_k=2, target_k=4, seed=0, split=True)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tfdnc import clustering
from tfdnc.datasets.base import ImageSet
from tfdnc.evaluation.embedding import embed_image_set, model_function
from tfdnc.utils import l2_normalize

CLUSTER_FEATURES = ("penultimate", "embedding")


@dataclass
class Assignment:
    """A new clustering: `assignments` (N,) ids in [0, k); `split_parents` the partition a split divided."""

    assignments: np.ndarray
    k: int
    split_parents: np.ndarray | None = None


def plan_assignments(features: np.ndarray, labels: np.ndarray, current: np.ndarray, current_k: int,
                     target_k: int, *, seed: int, split: bool, niter: int = 100) -> Assignment:
    """New cluster ids of the training set from its `features`.

    Without `split`: `target_k` balanced clusters of the fresh features,
    renumbered by Hungarian matching to the `current` ones when K stays the
    same. With `split` (K doubles), as the TPAMI code does: first that
    re-clustering at the current K on the fresh features, matched to the
    old clusters, then every fresh cluster c splits into 2c and 2c + 1 by
    2-means (CompVis/metric-learning-divide-and-conquer-improved:
    train.py:129-136 clusters at the current K, :193-220 reassigns by
    Hungarian matching, :233-250 divides each cluster), so a split never
    acts on a partition of stale features.
    """
    k = current_k if split else target_k
    if k == 1:
        fresh = np.zeros(len(labels), np.int64)
    else:
        fresh = clustering.cluster_balanced(features, labels, k, seed=seed, niter=niter)
        if current_k > 1 and k == current_k:
            fresh = clustering.match_clusters(fresh, current, k, k)[fresh]
    if not split:
        return Assignment(np.asarray(fresh, np.int64), k)
    children = clustering.split_clusters(features, labels, fresh, k, seed=seed + 1, niter=niter)
    return Assignment(np.asarray(children, np.int64), 2 * k, split_parents=fresh)


def check_cluster_features(cluster_features: str, who: str) -> None:
    if cluster_features not in CLUSTER_FEATURES:
        raise ValueError(f"{who}: `cluster_features` must be one of {CLUSTER_FEATURES}, got {cluster_features!r}")


def clustering_network(model, cluster_features: str) -> tuple:
    """(network, feature size): the part of the model whose output is clustered, the backbone or the model."""
    if cluster_features == "penultimate":
        return model.backbone, model.backbone.output_shape[-1]
    return model, model.embedding_dim


class LocalReclusterer:
    """Embeds the whole training set in this process and clusters it here.

    Args:
        train_set: the training images.
        image_size, resize_size: the evaluation transform.
        cluster_features: "penultimate" (backbone features, as the reference
            code clusters) or "embedding".
        kmeans_iters: Lloyd iterations.
        batch_size: images per embedding batch.
    """

    is_chief = True

    def __init__(self, train_set: ImageSet, *, image_size: int, resize_size: int | None = None,
                 cluster_features: str = "penultimate", kmeans_iters: int = 100, batch_size: int = 256):
        check_cluster_features(cluster_features, "LocalReclusterer")
        self.train_set = train_set
        self.image_size = int(image_size)
        self.resize_size = resize_size
        self.cluster_features = cluster_features
        self.kmeans_iters = int(kmeans_iters)
        self.batch_size = int(batch_size)

    def features(self, model) -> np.ndarray:
        """The training set's clustering features (L2-normalised), in order."""
        network, dim = clustering_network(model, self.cluster_features)
        features = embed_image_set(model_function(network), self.train_set, self.image_size, self.resize_size,
                                   batch_size=self.batch_size, dim=dim)
        return l2_normalize(features)

    def assign(self, features, labels, current, *, current_k: int, target_k: int, seed: int,
               split: bool) -> Assignment:
        return plan_assignments(features, labels, current, current_k, target_k, seed=seed, split=split,
                                niter=self.kmeans_iters)
