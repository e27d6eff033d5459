"""Re-clustering a training set that is embedded by several workers.

Each worker embeds its contiguous shard of the training set (streamed
through `tf.data`, so only the N x D features are ever held, never the
images), the rows are gathered to the chief in chunks, the chief clusters
them (k-means, 2-means splits, Hungarian ids: `tfdnc.clustering`), and the
new assignment is broadcast back, so every worker's sampler plans the same
batches. Checkpointing the cluster state is the chief's job too.

`DistributedSchedule` is `tfdnc.callbacks.DivideAndConquerSchedule` with
those three steps swapped in; it drives the same schedule (K doubling,
phases, state files) in the multi-worker loop of `tfdnc.distributed.driver`.

Example:

```python
schedule = DistributedSchedule(strategy, sampler, train_set, k_final=8, image_size=224)
fit_custom_loop(model, strategy, dataset_fn, steps_per_epoch=500, epochs=40, callbacks=[schedule])
```
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import tensorflow as tf

from tfdnc.callbacks import DivideAndConquerSchedule
from tfdnc.data.pipeline import make_eval_dataset
from tfdnc.datasets.base import ImageSet
from tfdnc.distributed.strategy import worker_info

__all__ = ["embed_images", "replica_blocks", "gather_rows_to_chief", "broadcast_from_chief", "DistributedSchedule"]


def embed_images(fn: Callable, dataset: tf.data.Dataset, num_rows: int, dim: int | None = None) -> np.ndarray:
    """Streams the image batches of `dataset` through `fn`; returns (num_rows, D) float32.

    The output is allocated once and filled batch by batch (no list of
    batch outputs to concatenate), so peak memory is N x D floats plus the
    batches in flight.

    Args:
        fn: images (B, H, W, C) -> features (B, D), e.g. a `tf.function` of
            `model.backbone`.
        dataset: yields image batches (e.g. `make_eval_dataset`).
        num_rows: images the dataset yields in total.
        dim: D (read from the first batch when None).
    """
    out = None if dim is None else np.empty((num_rows, dim), np.float32)
    row = 0
    for images in dataset:
        features = np.asarray(fn(images), dtype=np.float32)
        if out is None:
            out = np.empty((num_rows, features.shape[1]), np.float32)
        if row + len(features) > num_rows:
            raise ValueError(f"embed_images: the dataset yields more than num_rows={num_rows} images")
        out[row : row + len(features)] = features
        row += len(features)
    if row != num_rows:
        raise ValueError(f"embed_images: the dataset yielded {row} images, expected num_rows={num_rows}")
    return out if out is not None else np.empty((0, dim or 0), np.float32)


def replica_blocks(num_rows: int, num_replicas: int) -> int:
    """Rows per replica block: the set is split into equal contiguous blocks (the last padded)."""
    return max(1, math.ceil(num_rows / num_replicas))


def _local_replicas(strategy) -> int:
    # Replicas are numbered worker by worker, each worker holding the same count.
    return max(1, strategy.num_replicas_in_sync // worker_info(strategy).count)


def _worker_rows(strategy, num_rows: int) -> tuple[int, int, int]:
    """(first row, end row, block size) of this worker's replicas' blocks."""
    replicas = strategy.num_replicas_in_sync
    local = _local_replicas(strategy)
    block = replica_blocks(num_rows, replicas)
    first_replica = worker_info(strategy).index * local
    start = min(first_replica * block, num_rows)
    end = min((first_replica + local) * block, num_rows)
    return start, end, block


def gather_rows_to_chief(strategy, local_rows: np.ndarray, num_rows: int, chunk_rows: int = 32768) -> np.ndarray | None:
    """Assembles the (num_rows, D) matrix whose blocks the workers hold; on the chief only.

    Worker w holds rows `_worker_rows(...)` (its local replicas' blocks).
    The rows travel in chunks of `chunk_rows` per replica with the
    strategy's collective gather, so no worker ever holds more than its
    shard plus one gathered chunk, except the chief, which keeps the result.
    Returns None on the other workers. Every worker must call it.
    """
    start, end, block = _worker_rows(strategy, num_rows)
    if local_rows.shape[0] != end - start:
        raise ValueError(f"gather_rows_to_chief: this worker holds rows [{start}, {end}) but got {local_rows.shape[0]}")
    if worker_info(strategy).count == 1:
        return local_rows  # one worker holds every row already
    dim = local_rows.shape[1]
    local = _local_replicas(strategy)
    replicas = strategy.num_replicas_in_sync
    chief = worker_info(strategy).is_chief
    out = np.empty((num_rows, dim), np.float32) if chief else None
    chunk_rows = max(1, min(int(chunk_rows), block))
    for begin in range(0, block, chunk_rows):
        size = min(chunk_rows, block - begin)

        def piece(context, begin=begin, size=size):
            j = context.replica_id_in_sync_group % local
            rows = local_rows[j * block + begin : j * block + begin + size]
            padded = np.zeros((size, dim), np.float32)
            padded[: len(rows)] = rows
            return tf.constant(padded)

        values = strategy.experimental_distribute_values_from_function(piece)
        gathered = strategy.gather(values, axis=0)
        if chief:
            gathered = gathered.numpy().reshape(replicas, size, dim)
            for g in range(replicas):
                lo = g * block + begin
                hi = min(lo + size, num_rows)
                if hi > lo:
                    out[lo:hi] = gathered[g, : hi - lo]
    return out


def broadcast_from_chief(strategy, values: np.ndarray | None, shape: tuple, dtype=np.int32) -> np.ndarray:
    """The chief's `values` on every worker (an all-reduce sum with zeros elsewhere).

    Every worker must call it with the same `shape`; `values` is read on the
    chief only (pass None elsewhere).
    """
    info = worker_info(strategy)
    if info.is_chief:
        values = np.asarray(values)
        if values.shape != tuple(shape):
            raise ValueError(f"broadcast_from_chief: values have shape {values.shape}, expected {tuple(shape)}")
        if info.count == 1:
            return values.astype(dtype)

    def piece(context):
        first = info.is_chief and context.replica_id_in_sync_group == info.index * _local_replicas(strategy)
        return tf.constant(values.astype(dtype) if first else np.zeros(shape, dtype))

    per_replica = strategy.experimental_distribute_values_from_function(piece)
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    return np.asarray(total.numpy(), dtype=dtype)


class DistributedSchedule(DivideAndConquerSchedule):
    """`DivideAndConquerSchedule` for several workers: sharded embedding, chief clustering, broadcast.

    Every worker runs this callback at the same epochs (the driver keeps them
    in step). Only the chief clusters and writes the cluster state; the
    other workers receive the assignment, and grow their masks exactly as
    the chief does, so weights and samplers stay identical everywhere.

    Args:
        strategy: the `MultiWorkerMirroredStrategy` (any strategy works; with
            one worker this is the plain schedule).
        embed_batch_size: images per embedding batch on each worker.
        gather_chunk_rows: rows per replica per collective when gathering.
        **kwargs: as for `DivideAndConquerSchedule`.
    """

    def __init__(self, strategy, sampler, train_set: ImageSet, *, embed_batch_size: int = 256,
                 gather_chunk_rows: int = 32768, **kwargs):
        super().__init__(sampler, train_set, batch_size=embed_batch_size, **kwargs)
        self.strategy = strategy
        self.is_chief = worker_info(strategy).is_chief
        self.embed_batch_size = int(embed_batch_size)
        self.gather_chunk_rows = int(gather_chunk_rows)
        self._image_size = kwargs["image_size"]
        self._resize_size = kwargs.get("resize_size")

    def clustering_features(self) -> np.ndarray | None:
        n = len(self.train_set)
        start, end, _ = _worker_rows(self.strategy, n)
        shard = self.train_set.subset(np.arange(start, end))
        dataset = make_eval_dataset(shard, self._image_size, self._resize_size, self.embed_batch_size)
        network = self.model.backbone if self.cluster_features == "penultimate" else self.model
        fn = tf.function(lambda images: network(images, training=False))
        dim = network.output_shape[-1]
        local = embed_images(fn, dataset, end - start, dim) if end > start else np.empty((0, dim), np.float32)
        norms = np.linalg.norm(local, axis=1, keepdims=True)
        local = local / np.maximum(norms, 1e-12)
        return gather_rows_to_chief(self.strategy, local, n, self.gather_chunk_rows)

    def compute_assignments(self, features, k: int, seed: int, split: bool) -> np.ndarray:
        ids = super().compute_assignments(features, k, seed, split) if self.is_chief else None
        return broadcast_from_chief(self.strategy, ids, (len(self.labels),)).astype(np.int64)

    def _save_state(self, valid_from: int) -> None:
        if self.is_chief:
            super()._save_state(valid_from)
