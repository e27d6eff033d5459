"""Multi-class N-pair loss (Sohn, NeurIPS 2016)."""

from __future__ import annotations

import tensorflow as tf

from tfdnc.losses.anchor_positive import AnchorPositiveLoss
from tfdnc.losses.base import Batch, register_loss, safe_divide


@register_loss("npair")
class NPairLoss(AnchorPositiveLoss):
    """Softmax cross-entropy of each anchor over the positives of all pairs.

    The batch is cut into same-class pairs (anchor, positive) in batch order
    (P classes x M images give M // 2 pairs per class; an odd sample out is
    not used). Logits are inner products anchor_i . positive_j of the raw
    (unnormalised) embeddings; the target spreads evenly over the pairs of
    anchor i's class, and an L2 penalty
    0.25 * l2_regularization * (mean ||anchor||^2 + mean ||positive||^2)
    keeps the norms in check (as TensorFlow's `npairs_loss`).

    Args:
        l2_regularization: weight of the embedding-norm penalty.
        reducer: see `MetricLoss` (the elements are the anchors; default "mean").
        symmetrical, symm_rule: Symmetrical Synthesis: the logit between
            pairs of different classes becomes the hardest similarity
            between their originals and synthetics (the authors applied
            Symm first to this loss; `symm_rule="code"` is their code's rule).

    Examples:
        >>> loss = NPairLoss(symmetrical=True)
        >>> value = loss(tf.constant([0, 0, 1, 1, 2, 2]), tf.random.normal((6, 16)))
    """

    def __init__(
        self,
        l2_regularization: float = 0.002,
        symmetrical: bool = False,
        symm_rule: str = "paper",
        reducer=None,
        name: str = "npair_loss",
        **kwargs,
    ):
        super().__init__(symmetrical=symmetrical, symm_rule=symm_rule, reducer=reducer, name=name, **kwargs)
        if l2_regularization < 0:
            raise ValueError(f"NPairLoss: `l2_regularization` must be >= 0, got {l2_regularization}")
        self.l2_regularization = float(l2_regularization)

    def compute(self, batch: Batch):
        labels, embeddings, sample_weight = batch.labels, batch.embeddings, batch.sample_weight
        logits, own, is_anchor, same, positives, stats = self._anchor_positive_logits(labels, embeddings)
        cols = is_anchor[None, :]
        lowest = tf.fill(tf.shape(logits), tf.constant(-1e30, logits.dtype))
        log_prob = tf.nn.log_softmax(tf.where(cols, logits, lowest), axis=1)
        target = tf.cast(same & cols, tf.float32)
        target = safe_divide(target, tf.reduce_sum(target, axis=1, keepdims=True))
        # Mask before multiplying: log_prob is ~-1e30 in masked columns.
        ce = -tf.reduce_sum(tf.where(target > 0, target * log_prob, 0.0), axis=1)
        loss = self.reducer(ce, is_anchor, sample_weight)
        loss += self._embedding_l2(embeddings, positives, is_anchor)
        neg = tf.logical_not(same) & cols & is_anchor[:, None]
        violated = neg & (logits >= own[:, None])
        active = safe_divide(
            tf.reduce_sum(tf.cast(violated, tf.float32)), tf.reduce_sum(tf.cast(neg, tf.float32))
        )
        return loss, {**stats, "active_fraction": active}

    def get_config(self) -> dict:
        return {**super().get_config(), "l2_regularization": self.l2_regularization}
