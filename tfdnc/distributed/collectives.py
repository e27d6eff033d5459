"""Collectives that move NumPy rows between the workers of a `tf.distribute` strategy.

The training set is split into equal contiguous blocks, one per replica
(`replica_blocks`); worker w holds its local replicas' blocks
(`worker_rows`). `gather_rows_to_chief` assembles the blocks on the chief in
chunks, and `broadcast_from_chief` hands the chief's array to every worker.
The multi-worker re-clustering (`tfdnc.training.distributed`) is built on them.

Example (on every worker):

```python
start, end, _ = worker_rows(strategy, n)
features = gather_rows_to_chief(strategy, my_rows, n)           # (n, D) on the chief, None elsewhere
ids = broadcast_from_chief(strategy, ids_on_chief, (n,))          # the same on every worker
```
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfdnc.distributed.strategy import worker_info

__all__ = ["replica_blocks", "local_replicas", "worker_rows", "gather_rows_to_chief", "broadcast_from_chief"]


def replica_blocks(num_rows: int, num_replicas: int) -> int:
    """Rows per replica block: the set is split into equal contiguous blocks (the last padded)."""
    return max(1, math.ceil(num_rows / num_replicas))


def local_replicas(strategy) -> int:
    """Replicas on this worker."""
    # Replicas are numbered worker by worker, each worker holding the same count.
    return max(1, strategy.num_replicas_in_sync // worker_info(strategy).count)


def worker_rows(strategy, num_rows: int) -> tuple[int, int, int]:
    """(first row, end row, block size) of this worker's replicas' blocks."""
    replicas = strategy.num_replicas_in_sync
    local = local_replicas(strategy)
    block = replica_blocks(num_rows, replicas)
    first_replica = worker_info(strategy).index * local
    start = min(first_replica * block, num_rows)
    end = min((first_replica + local) * block, num_rows)
    return start, end, block


def gather_rows_to_chief(strategy, local_rows: np.ndarray, num_rows: int, chunk_rows: int = 32768) -> np.ndarray | None:
    """Assembles the (num_rows, D) matrix whose blocks the workers hold; on the chief only.

    Worker w holds rows `worker_rows(...)` (its local replicas' blocks).
    The rows travel in chunks of `chunk_rows` per replica with the
    strategy's collective gather, so no worker ever holds more than its
    shard plus one gathered chunk, except the chief, which keeps the result.
    Returns None on the other workers. Every worker must call it.
    """
    start, end, block = worker_rows(strategy, num_rows)
    if local_rows.shape[0] != end - start:
        raise ValueError(f"gather_rows_to_chief: this worker holds rows [{start}, {end}) but got {local_rows.shape[0]}")
    if worker_info(strategy).count == 1:
        return local_rows  # one worker holds every row already
    dim = local_rows.shape[1]
    local = local_replicas(strategy)
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
        first = info.is_chief and context.replica_id_in_sync_group == info.index * local_replicas(strategy)
        return tf.constant(values.astype(dtype) if first else np.zeros(shape, dtype))

    per_replica = strategy.experimental_distribute_values_from_function(piece)
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    return np.asarray(total.numpy(), dtype=dtype)
