"""Re-clustering the training set: the `Reclusterer` interface and its two implementations.

`DivideAndConquerSchedule` decides *when* to cluster and *at which K*
(`PhasePolicy`, the one place of the K rule, hands it a `KStep`); a
`Reclusterer` decides *how*: which features, and which ids. The schedule
calls, at every clustering and on every worker, in this order:

    features = reclusterer.features(model)          # None on a worker that does not cluster
    new = reclusterer.assign(features, current, step, seed=seed)

- `LocalReclusterer` embeds the whole training set in this process and
  clusters it here;
- `DistributedReclusterer` (several workers) embeds a shard per worker,
  gathers the rows on the chief, clusters there and broadcasts the ids, so
  every worker's sampler plans the same batches.

Both cluster with `plan_assignments` (balanced k-means, Hungarian ids,
2-means splits: `tfdnc.clustering`). To change how a run re-clusters,
subclass `Reclusterer` (or `LocalReclusterer`) and give it to the schedule.

Examples:
    >>> reclusterer = LocalReclusterer(train_set, image_size=32)  # doctest: +SKIP
    >>> features = reclusterer.features(model)  # doctest: +SKIP
    >>> new = reclusterer.assign(features, current, KStep(current_k=2, k=2, split=True), seed=0)  # doctest: +SKIP
    >>> new.k  # doctest: +SKIP
    4
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from tfdnc import clustering
from tfdnc.datasets.base import ImageSet
from tfdnc.distributed.collectives import broadcast_from_chief, gather_rows_to_chief, worker_rows
from tfdnc.distributed.strategy import worker_info
from tfdnc.evaluation.embedding import embed_image_set, model_function
from tfdnc.training.phases import KStep
from tfdnc.utils import l2_normalize

CLUSTER_FEATURES = ("penultimate", "embedding")


@dataclass
class Assignment:
    """A new clustering: `assignments` (N,) ids in [0, k); `split_parents` the partition a split divided."""

    assignments: np.ndarray
    k: int
    split_parents: np.ndarray | None = None


class Reclusterer(abc.ABC):
    """Computes the training set's new clusters for `DivideAndConquerSchedule`.

    At every clustering the schedule calls, on every worker and in this order,
    `features(model)` and then `assign(features, current, step, seed=...)`,
    and applies the returned `Assignment` itself (sampler, learners, saved
    state). A reclusterer never decides K: `step` (`KStep`, from
    `PhasePolicy`, the one place of the K rule) says how many clusters to
    make and whether they split in two; the result must have
    `k == step.new_k` and be the same on every worker.

    Subclasses set `train_set` (the training images, in the sampler's order)
    and implement the two methods. `is_chief` says whether this process
    clusters (the others get None features).

    Examples:
        >>> class Random(Reclusterer):
        ...     def __init__(self, train_set): self.train_set = train_set
        ...     def features(self, model): return None
        ...     def assign(self, features, current, step, *, seed):
        ...         ids = np.random.default_rng(seed).integers(0, step.new_k, len(self.labels))
        ...         return Assignment(ids, step.new_k)
        >>> schedule = DivideAndConquerSchedule(sampler, reclusterer=Random(train_set), k_final=4)  # doctest: +SKIP
    """

    train_set: ImageSet
    is_chief: bool = True

    @property
    def labels(self) -> np.ndarray:
        """(N,) class ids of the training set."""
        return np.asarray(self.train_set.labels)

    @abc.abstractmethod
    def features(self, model) -> np.ndarray | None:
        """(N, D) clustering features of the training set, in order; None on a worker that does not cluster."""

    @abc.abstractmethod
    def assign(self, features: np.ndarray | None, current: np.ndarray, step: KStep, *, seed: int) -> Assignment:
        """The new cluster ids of every training image (`current`: the ids so far, K = `step.current_k`)."""


def plan_assignments(features: np.ndarray, labels: np.ndarray, current: np.ndarray, current_k: int,
                     target_k: int, *, seed: int, split: bool, niter: int = 100) -> Assignment:
    """New cluster ids of the training set from its `features` (`target_k` and `split`: a `KStep`'s k and split).

    `target_k` balanced clusters of the fresh features, renumbered by
    Hungarian matching to the `current` ones when K stays the same. With
    `split` (K doubles, `target_k == current_k`), as the TPAMI code does:
    that re-clustering at the current K on the fresh features, matched to
    the old clusters, then every fresh cluster c splits into 2c and 2c + 1
    by 2-means (CompVis/metric-learning-divide-and-conquer-improved:
    train.py:129-136 clusters at the current K, :193-220 reassigns by
    Hungarian matching, :233-250 divides each cluster), so a split never
    acts on a partition of stale features.
    """
    if split and target_k != current_k:
        raise ValueError(f"plan_assignments: a split re-clusters at the current K ({current_k}), "
                         f"got target_k={target_k}")
    k = int(target_k)
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


class LocalReclusterer(Reclusterer):
    """Embeds the whole training set in this process and clusters it here.

    Args:
        train_set: the training images.
        image_size, resize_size: the evaluation transform.
        cluster_features: "penultimate" (backbone features, as the reference
            code clusters) or "embedding".
        kmeans_iters: Lloyd iterations.
        batch_size: images per embedding batch.
    """

    def __init__(self, train_set: ImageSet, *, image_size: int, resize_size: int | None = None,
                 cluster_features: str = "penultimate", kmeans_iters: int = 100, batch_size: int = 256):
        check_cluster_features(cluster_features, type(self).__name__)
        self.train_set = train_set
        self.image_size = int(image_size)
        self.resize_size = resize_size
        self.cluster_features = cluster_features
        self.kmeans_iters = int(kmeans_iters)
        self.batch_size = int(batch_size)

    def embed(self, model, image_set: ImageSet) -> np.ndarray:
        """The L2-normalised clustering features of `image_set` under the evaluation transform."""
        network, dim = clustering_network(model, self.cluster_features)
        features = embed_image_set(model_function(network), image_set, self.image_size, self.resize_size,
                                   batch_size=self.batch_size, dim=dim)
        return l2_normalize(features)

    def features(self, model) -> np.ndarray:
        """The training set's clustering features (L2-normalised), in order."""
        return self.embed(model, self.train_set)

    def assign(self, features, current, step: KStep, *, seed: int) -> Assignment:
        """Clusters `features` here (`plan_assignments`)."""
        return plan_assignments(features, self.labels, current, step.current_k, step.k, seed=seed,
                                split=step.split, niter=self.kmeans_iters)


class DistributedReclusterer(LocalReclusterer):
    """Re-clustering over several workers: sharded embedding, chief clustering, broadcast.

    Every worker calls `features` and `assign` at the same epochs (the driver
    keeps them in step). Each worker embeds its contiguous shard (streamed
    through `tf.data`: only the N x D features are ever held), the rows are
    gathered to the chief in chunks; `features` returns the whole matrix on
    the chief and None elsewhere. `assign` clusters on the chief (the local
    steps) and returns the chief's ids on every worker, so the samplers plan
    the same batches and the masks grow alike everywhere
    (`tfdnc.distributed.collectives`).

    Args:
        strategy: the `MultiWorkerMirroredStrategy` (any strategy works; with
            one worker it clusters locally).
        train_set, image_size, resize_size, cluster_features, kmeans_iters:
            as `LocalReclusterer`.
        embed_batch_size: images per embedding batch on each worker.
        gather_chunk_rows: rows per replica per collective when gathering.
    """

    def __init__(self, strategy, train_set: ImageSet, *, image_size: int, resize_size: int | None = None,
                 cluster_features: str = "penultimate", kmeans_iters: int = 100, embed_batch_size: int = 256,
                 gather_chunk_rows: int = 32768):
        super().__init__(train_set, image_size=image_size, resize_size=resize_size,
                         cluster_features=cluster_features, kmeans_iters=kmeans_iters, batch_size=embed_batch_size)
        self.strategy = strategy
        self.gather_chunk_rows = int(gather_chunk_rows)
        self.is_chief = worker_info(strategy).is_chief

    def features(self, model) -> np.ndarray | None:
        """This worker embeds its rows; the chief gets all of them (L2-normalised), the others None."""
        n = len(self.train_set)
        start, end, _ = worker_rows(self.strategy, n)
        local = np.empty((0, clustering_network(model, self.cluster_features)[1]), np.float32)
        if end > start:
            local = self.embed(model, self.train_set.subset(np.arange(start, end)))
        return gather_rows_to_chief(self.strategy, local, n, self.gather_chunk_rows)

    def assign(self, features, current, step: KStep, *, seed: int) -> Assignment:
        """The chief clusters (`LocalReclusterer.assign`); every worker receives its ids."""
        new = super().assign(features, current, step, seed=seed) if self.is_chief else None
        ids = broadcast_from_chief(self.strategy, None if new is None else new.assignments, (len(current),))
        parents = None if new is None else new.split_parents
        return Assignment(ids.astype(np.int64), step.new_k, split_parents=parents)
