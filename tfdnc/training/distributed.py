"""Re-clustering a training set that is embedded by several workers.

Each worker embeds its contiguous shard of the training set (streamed
through `tf.data`, so only the N x D features are ever held, never the
images), the rows are gathered to the chief in chunks, the chief clusters
them (k-means, 2-means splits, Hungarian ids: `plan_assignments`), and the
new assignment is broadcast back, so every worker's sampler plans the same
batches (`tfdnc.distributed.collectives`). Checkpointing the cluster state
is the chief's job too.

`DistributedReclusterer` does those steps; `DistributedSchedule` gives it,
with a cluster-state store that only the chief writes, to the ordinary
`DivideAndConquerSchedule`, which drives the same schedule (K doubling,
phases, state files) in the multi-worker loop of `tfdnc.distributed.driver`.

Example:

```python
schedule = DistributedSchedule(strategy, sampler, train_set, k_final=8, image_size=224)
fit_custom_loop(model, strategy, dataset_fn, steps_per_epoch=500, epochs=40, callbacks=[schedule])
```
"""

from __future__ import annotations

import numpy as np

from tfdnc.datasets.base import ImageSet
from tfdnc.distributed.collectives import broadcast_from_chief, gather_rows_to_chief, worker_rows
from tfdnc.distributed.strategy import worker_info
from tfdnc.evaluation.embedding import embed_image_set, model_function
from tfdnc.training.cluster_state import ClusterStateStore
from tfdnc.training.recluster import Assignment, check_cluster_features, clustering_network, plan_assignments
from tfdnc.training.schedule import DivideAndConquerSchedule
from tfdnc.utils import l2_normalize

__all__ = ["DistributedReclusterer", "DistributedSchedule"]


class DistributedReclusterer:
    """Re-clustering over several workers: sharded embedding, chief clustering, broadcast.

    Every worker calls `features` and `assign` at the same epochs (the driver
    keeps them in step). `features` returns the whole matrix on the chief and
    None elsewhere; `assign` returns the chief's ids on every worker, so the
    samplers plan the same batches and the masks grow alike everywhere.

    Args:
        strategy: the `MultiWorkerMirroredStrategy` (any strategy works; with
            one worker it clusters locally).
        train_set: the training images.
        image_size, resize_size: the evaluation transform.
        cluster_features: "penultimate" or "embedding".
        kmeans_iters: Lloyd iterations.
        embed_batch_size: images per embedding batch on each worker.
        gather_chunk_rows: rows per replica per collective when gathering.
    """

    def __init__(self, strategy, train_set: ImageSet, *, image_size: int, resize_size: int | None = None,
                 cluster_features: str = "penultimate", kmeans_iters: int = 100, embed_batch_size: int = 256,
                 gather_chunk_rows: int = 32768):
        check_cluster_features(cluster_features, "DistributedReclusterer")
        self.strategy = strategy
        self.train_set = train_set
        self.image_size = int(image_size)
        self.resize_size = resize_size
        self.cluster_features = cluster_features
        self.kmeans_iters = int(kmeans_iters)
        self.embed_batch_size = int(embed_batch_size)
        self.gather_chunk_rows = int(gather_chunk_rows)
        self.is_chief = worker_info(strategy).is_chief

    def features(self, model) -> np.ndarray | None:
        """This worker embeds its rows; the chief gets all of them (L2-normalised), the others None."""
        n = len(self.train_set)
        start, end, _ = worker_rows(self.strategy, n)
        network, dim = clustering_network(model, self.cluster_features)
        local = np.empty((0, dim), np.float32)
        if end > start:
            shard = self.train_set.subset(np.arange(start, end))
            local = l2_normalize(embed_image_set(model_function(network), shard, self.image_size, self.resize_size,
                                                 batch_size=self.embed_batch_size, dim=dim))
        return gather_rows_to_chief(self.strategy, local, n, self.gather_chunk_rows)

    def assign(self, features, labels, current, *, current_k: int, target_k: int, seed: int,
               split: bool) -> Assignment:
        """The chief clusters (`plan_assignments`); every worker receives its ids."""
        new = None
        if self.is_chief:
            new = plan_assignments(features, labels, current, current_k, target_k, seed=seed, split=split,
                                   niter=self.kmeans_iters)
        ids = broadcast_from_chief(self.strategy, None if new is None else new.assignments, (len(labels),))
        k = 2 * current_k if split else target_k
        parents = None if new is None else new.split_parents
        return Assignment(ids.astype(np.int64), k, split_parents=parents)


def DistributedSchedule(strategy, sampler, train_set: ImageSet, *, embed_batch_size: int = 256,  # noqa: N802
                        gather_chunk_rows: int = 32768, state_dir: str | None = None,
                        **kwargs) -> DivideAndConquerSchedule:
    """A `DivideAndConquerSchedule` for several workers.

    It is given a `DistributedReclusterer` and a cluster-state store that
    only the chief writes; `kwargs` are those of `DivideAndConquerSchedule`.
    """
    reclusterer = DistributedReclusterer(
        strategy, train_set, image_size=kwargs["image_size"], resize_size=kwargs.get("resize_size"),
        cluster_features=kwargs.get("cluster_features", "penultimate"),
        kmeans_iters=kwargs.get("kmeans_iters", 100), embed_batch_size=embed_batch_size,
        gather_chunk_rows=gather_chunk_rows)
    store = ClusterStateStore(state_dir, read_only=not reclusterer.is_chief)
    return DivideAndConquerSchedule(sampler, train_set, state_dir=state_dir, reclusterer=reclusterer, store=store,
                                    **kwargs)
