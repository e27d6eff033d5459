"""Cross-replica all-gather of a training batch, so mining sees the global batch.

Under a `tf.distribute` strategy every replica holds a slice of the global
batch. The metric losses mine pairs and synthesise negatives among the rows
they are given, so each replica all-gathers the embeddings and labels of
every replica (in replica order, which rebuilds the global batch) and
computes the loss of the whole global batch.

Gradients: `ReplicaContext.all_gather` sums the incoming gradient over the
replicas and hands each replica the rows of its own slice. Every replica
computes the same global loss, so with the loss divided by the number of
replicas (`replica_loss_scale`) the slice gradient is exactly dL/dz of the
single-device run, and the optimizer's cross-replica *sum* of the weight
gradients is the single-device gradient of the global batch.

Outside a strategy (or with one replica) both functions are identities.

Example (inside `train_step`):

```python
z, labels = all_gather_batch(z, labels)      # (global batch, d), (global batch,)
loss = metric_loss(labels, z)                 # the same value on every replica
tape_loss = loss * replica_loss_scale()       # 1 / replicas: gradients are summed
```
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["num_replicas", "replica_loss_scale", "all_gather_batch"]


def _replica_context():
    context = tf.distribute.get_replica_context()
    if context is None:
        # Cross-replica context: the caller is outside `strategy.run`.
        raise RuntimeError(
            "all_gather_batch / replica_loss_scale must be called inside a replica function "
            "(a train_step run by `fit` or `strategy.run`), not in cross-replica context"
        )
    return context


def num_replicas() -> int:
    """Replicas taking part in the current step (1 outside any strategy)."""
    return int(_replica_context().num_replicas_in_sync)


def replica_loss_scale() -> float:
    """1 / replicas: the factor that makes summed replica gradients the global gradient."""
    return 1.0 / num_replicas()


def all_gather_batch(*tensors):
    """Concatenates each tensor over all replicas along axis 0, in replica order.

    Args:
        *tensors: per-replica batch tensors, all with the same number of rows
            (e.g. embeddings (b, d) and labels (b,)).

    Returns:
        A tuple of the gathered tensors, (R * b, ...) each; the inputs
        themselves with one replica. Float tensors keep their gradient path
        (see the module docstring); integer tensors (labels) carry none.
    """
    if not tensors:
        raise ValueError("all_gather_batch: pass at least one tensor")
    context = _replica_context()
    if context.num_replicas_in_sync == 1:
        return tuple(tensors)
    for i, tensor in enumerate(tensors):
        if tensor.shape.rank is not None and tensor.shape.rank < 1:
            raise ValueError(f"all_gather_batch: tensor {i} must have a batch axis, got shape {tensor.shape}")
    differentiable = [t for t in tensors if t.dtype.is_floating]
    constant = [tf.stop_gradient(t) for t in tensors if not t.dtype.is_floating]
    gathered_float = list(context.all_gather(differentiable, axis=0)) if differentiable else []
    gathered_int = list(context.all_gather(constant, axis=0)) if constant else []
    replicas = context.num_replicas_in_sync
    out = []
    for t in tensors:
        gathered = gathered_float.pop(0) if t.dtype.is_floating else gathered_int.pop(0)
        # The collective drops static shapes; the losses need the feature size.
        rows = t.shape[0] * replicas if t.shape.rank and t.shape[0] is not None else None
        gathered.set_shape(tf.TensorShape([rows]).concatenate(t.shape[1:]) if t.shape.rank else None)
        out.append(gathered)
    return tuple(out)
