"""The Divide & Conquer schedule of a multi-worker run.

`DistributedSchedule` gives the ordinary `DivideAndConquerSchedule` a
`DistributedReclusterer` (`tfdnc.training.recluster`: each worker embeds a
shard, the chief clusters, the ids are broadcast) and a cluster-state store
that only the chief writes; the schedule (K doubling, phases, state files)
is the same as on one machine, driven by the multi-worker loop of
`tfdnc.distributed.driver`.

Example:

```python
schedule = DistributedSchedule(strategy, sampler, train_set, k_final=8, image_size=224)
fit_custom_loop(model, strategy, dataset_fn, steps_per_epoch=500, epochs=40, callbacks=[schedule])
```
"""

from __future__ import annotations

from tfdnc.datasets.base import ImageSet
from tfdnc.training.cluster_state import ClusterStateStore
from tfdnc.training.recluster import DistributedReclusterer
from tfdnc.training.schedule import DivideAndConquerSchedule

__all__ = ["DistributedSchedule"]


def DistributedSchedule(strategy, sampler, train_set: ImageSet, *, image_size: int,  # noqa: N802
                        resize_size: int | None = None, cluster_features: str = "penultimate",
                        kmeans_iters: int = 100, embed_batch_size: int = 256, gather_chunk_rows: int = 32768,
                        state_dir: str | None = None, **kwargs) -> DivideAndConquerSchedule:
    """A `DivideAndConquerSchedule` for several workers.

    The clustering arguments go to its `DistributedReclusterer`; `kwargs`
    (k_final, growth, recluster_every, ...) are the schedule's.
    """
    reclusterer = DistributedReclusterer(
        strategy, train_set, image_size=image_size, resize_size=resize_size, cluster_features=cluster_features,
        kmeans_iters=kmeans_iters, embed_batch_size=embed_batch_size, gather_chunk_rows=gather_chunk_rows)
    store = ClusterStateStore(state_dir, read_only=not reclusterer.is_chief)
    return DivideAndConquerSchedule(sampler, reclusterer=reclusterer, store=store, **kwargs)
