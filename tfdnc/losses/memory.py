"""Cross-batch memory (XBM, Wang et al. CVPR 2020) around any pair-based tfdnc loss."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfdnc.losses.base import Batch, LossNeeds, LossParameters, MetricLoss, Reference, learner_slot


@keras.saving.register_keras_serializable(package="tfdnc")  # a wrapper, not a loss name: `get_loss(..., xbm_size=)`
class CrossBatchMemory(MetricLoss):
    """Compares each batch with a FIFO memory of past embeddings, one memory per D&C learner.

    Every call first writes the batch's embeddings (without gradient) and
    labels into the memory of the batch's learner, overwriting the oldest
    entries once it is full, then computes the wrapped loss with the batch as
    anchors and the memory (which now holds the batch too) as the positives
    and negatives; an anchor is never paired with its own entry. This is
    pytorch-metric-learning's `CrossBatchMemory` semantics
    (KevinMusgrave/pytorch-metric-learning:
    src/pytorch_metric_learning/losses/cross_batch_memory.py, `forward` and
    `add_to_memory`): only the anchors get a gradient.

    Divide & Conquer: `learner=k` uses memory k (filled from learner k's
    masked embeddings); `learner=None` (the full-embedding phase) uses an
    extra memory. `on_clusters_changed()` empties every memory: embeddings
    of an old clustering live in other subspaces. With `training=False` the
    wrapped loss sees the batch alone and the memory is untouched.

    The memory is non-trainable variables of `variables_layer`, so it is saved
    and checkpointed with a model that tracks that layer (as
    `DivideAndConquerModel` does) and restored on resume. Under a
    `tf.distribute` strategy every replica is expected to see the same global
    batch (the model all-gathers it); the variables aggregate as
    "only_first_replica", so every replica holds the same memory.

    Two departures from that default follow the XBM authors' code
    (msight-tech/research-xbm: ret_benchmark/engine/trainer.py:109-117):
    `start_step` (their START_ITERATION) leaves the memory out (no writes,
    the wrapped loss on the batch alone) for the first training calls, while
    embeddings still drift fast; `batch_loss=True` adds the wrapped loss of
    the batch against itself (with its full gradient) to `memory_weight` x the
    memory loss, as their `loss + XBM.WEIGHT * xbm_loss`.

    Memory: (num_learners + 1) x memory_size x (embedding_dim + 1) x 4 bytes.

    Args:
        loss: the wrapped `MetricLoss` (or its serialised config); it must
            compare a batch with a reference set (`needs().reference`:
            margin, triplet, contrastive, multi-similarity) and not use
            Symmetrical Synthesis.
        memory_size: entries per memory; at least the (global) batch size.
        embedding_dim: size of the embeddings.
        num_learners: number of D&C learners (K); 1 without D&C.
        start_step: training calls before the memory is used (and written).
        batch_loss: also add the wrapped loss of the batch against itself.
        memory_weight: weight of the memory loss.

    Examples:
        >>> from tfdnc.losses import MarginLoss
        >>> loss = CrossBatchMemory(MarginLoss(), memory_size=4096, embedding_dim=128, num_learners=4)
        >>> labels = tf.constant([0, 0, 1, 1, 2, 2])
        >>> embeddings = tf.math.l2_normalize(tf.random.normal((6, 128)), axis=1)
        >>> value, stats = loss.compute_loss_and_stats(labels, embeddings, learner=2)
        >>> loss.on_clusters_changed()   # empties all memories
    """

    NEEDS = LossNeeds(symmetrical=False, facts=("embedding_dim", "num_learners"))

    def __init__(
        self,
        loss,
        memory_size: int = 1024,
        embedding_dim: int | None = None,
        num_learners: int = 1,
        start_step: int = 0,
        batch_loss: bool = False,
        memory_weight: float = 1.0,
        name: str | None = None,
        **kwargs,
    ):
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        if not isinstance(loss, MetricLoss):
            raise ValueError(f"CrossBatchMemory: `loss` must be a tfdnc MetricLoss, got {loss!r}")
        if not loss.needs().reference:
            raise ValueError(
                f"CrossBatchMemory: `loss` {type(loss).__name__} is not pair-based (it cannot compare "
                "a batch with a memory); use margin, triplet, contrastive or multi_similarity"
            )
        if loss.symmetrical:
            raise ValueError("CrossBatchMemory: the wrapped `loss` cannot use `symmetrical=True`")
        if int(memory_size) < 1:
            raise ValueError(f"CrossBatchMemory: `memory_size` must be >= 1, got {memory_size}")
        if embedding_dim is None or int(embedding_dim) < 1:
            raise ValueError(f"CrossBatchMemory: `embedding_dim` must be >= 1, got {embedding_dim}")
        if int(num_learners) < 1:
            raise ValueError(f"CrossBatchMemory: `num_learners` must be >= 1, got {num_learners}")
        if int(start_step) < 0:
            raise ValueError(f"CrossBatchMemory: `start_step` must be >= 0, got {start_step}")
        if not memory_weight > 0:
            raise ValueError(f"CrossBatchMemory: `memory_weight` must be > 0, got {memory_weight}")
        super().__init__(name=name or f"xbm_{loss.name}", **kwargs)
        self.loss = loss
        self.memory_size = int(memory_size)
        self.embedding_dim = int(embedding_dim)
        self.num_learners = int(num_learners)
        self.start_step = int(start_step)
        self.batch_loss = bool(batch_loss)
        self.memory_weight = float(memory_weight)
        slots = self.num_learners + 1
        layer = LossParameters(name=f"{self.name}_memory")
        state = {"trainable": False, "initializer": "zeros", "aggregation": "only_first_replica"}
        self.memory_embeddings = layer.add_weight(
            shape=(slots, self.memory_size, self.embedding_dim), dtype="float32", name="embeddings", **state
        )
        self.memory_labels = layer.add_weight(shape=(slots, self.memory_size), dtype="int32", name="labels", **state)
        # entries written so far (saturates at memory_size) and the next slot to write
        self.memory_count = layer.add_weight(shape=(slots,), dtype="int32", name="count", **state)
        self.memory_pointer = layer.add_weight(shape=(slots,), dtype="int32", name="pointer", **state)
        # training calls so far (for `start_step`; not reset with the memories)
        self.steps = layer.add_weight(shape=(), dtype="int32", name="steps", **state)
        if loss.variables_layer is not None:
            layer.wrapped_loss_parameters = loss.variables_layer  # e.g. learnable beta
        self._variables_layer = layer

    def needs(self) -> LossNeeds:
        """The memory's needs, with the wrapped loss's choice of normalised embeddings and batch contents."""
        inner = self.loss.needs()
        return LossNeeds(normalized=inner.normalized, positives=inner.positives, negatives=inner.negatives,
                         symmetrical=False, facts=self.NEEDS.facts)

    def compute(self, batch: Batch):
        labels, embeddings, sample_weight, miner = batch.labels, batch.embeddings, batch.sample_weight, batch.miner
        if embeddings.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"CrossBatchMemory: `y_pred` has embedding size {embeddings.shape[-1]}, the memory "
                f"{self.embedding_dim} (`embedding_dim`)"
            )
        if embeddings.shape[0] is not None and embeddings.shape[0] > self.memory_size:
            raise ValueError(
                f"CrossBatchMemory: the batch ({embeddings.shape[0]}) is larger than `memory_size` "
                f"({self.memory_size})"
            )
        if not batch.training:
            return self.loss.compute_loss_and_stats(labels, embeddings, sample_weight=sample_weight, miner=miner)
        slot = learner_slot(batch.learner, self.num_learners)
        use_memory = tf.convert_to_tensor(self.steps) >= self.start_step
        self.steps.assign_add(1)
        positions = self._enqueue(slot, labels, embeddings, use_memory)
        count = tf.gather(tf.convert_to_tensor(self.memory_count), slot)
        reference = Reference(
            labels=tf.gather(tf.convert_to_tensor(self.memory_labels), slot),
            embeddings=tf.gather(tf.convert_to_tensor(self.memory_embeddings), slot),
            valid=tf.range(self.memory_size, dtype=tf.int32) < count,
            self_index=positions,
        )
        loss, stats = self.loss.compute_against_reference(labels, embeddings, reference, sample_weight, miner=miner)
        loss = self.memory_weight * loss
        if self.batch_loss or self.start_step > 0:
            alone, batch_stats = self.loss.compute_loss_and_stats(labels, embeddings, sample_weight=sample_weight,
                                                                  miner=miner)
            # before `start_step` the batch alone; after it the memory loss (plus the batch's)
            loss = tf.where(use_memory, loss + alone if self.batch_loss else loss, alone)
            stats = {k: tf.where(use_memory, v, batch_stats[k]) if k in batch_stats else v for k, v in stats.items()}
        stats["memory_fill"] = tf.cast(count, tf.float32) / float(self.memory_size)
        return loss, stats

    def _enqueue(self, slot, labels, embeddings, write=True) -> tf.Tensor:
        """Writes the batch at the slot's pointer (wrapping around) if `write`; returns the positions.

        Without `write` the memory keeps its content and the positions point
        past the filled part (no anchor meets its own entry).
        """
        b = tf.shape(labels)[0]
        pointer = tf.gather(tf.convert_to_tensor(self.memory_pointer), slot)
        positions = tf.math.floormod(pointer + tf.range(b, dtype=tf.int32), self.memory_size)
        where = tf.stack([tf.fill([b], slot), positions], axis=1)
        count = tf.gather(tf.convert_to_tensor(self.memory_count), slot)
        updates = (
            (self.memory_embeddings, where, tf.stop_gradient(embeddings)),
            (self.memory_labels, where, labels),
            (self.memory_count, [[slot]], [tf.minimum(count + b, self.memory_size)]),
            (self.memory_pointer, [[slot]], [tf.math.floormod(pointer + b, self.memory_size)]),
        )
        for variable, index, values in updates:
            old = tf.convert_to_tensor(variable)
            variable.assign(tf.where(write, tf.tensor_scatter_nd_update(old, index, values), old))
        return tf.where(write, positions, -tf.ones_like(positions))

    def on_clusters_changed(self) -> None:
        """Empties every memory (the learners' subspaces change with the clusters)."""
        self.reset()

    def reset(self) -> None:
        """Empties every memory."""
        for variable in (self.memory_embeddings, self.memory_labels, self.memory_count, self.memory_pointer):
            variable.assign(tf.zeros(variable.shape, variable.dtype))

    def memory_bytes(self) -> int:
        """Bytes held by the memory variables."""
        slots = self.num_learners + 1
        return 4 * (slots * self.memory_size * (self.embedding_dim + 1) + 2 * slots + 1)

    def get_config(self) -> dict:
        config = super().get_config()
        for key in ("symmetrical", "symm_rule", "reducer", "distance"):
            config.pop(key, None)
        return {
            **config,
            "loss": keras.saving.serialize_keras_object(self.loss),
            "memory_size": self.memory_size,
            "embedding_dim": self.embedding_dim,
            "num_learners": self.num_learners,
            "start_step": self.start_step,
            "batch_loss": self.batch_loss,
            "memory_weight": self.memory_weight,
        }
