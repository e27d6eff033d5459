"""Multi-class N-pair loss (Sohn, NeurIPS 2016)."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfdnc.distances import pairwise_dot
from tfdnc.layers.synthesis import pair_within_classes
from tfdnc.losses.base import MetricLoss, safe_divide


def _anchor_positive_logits(loss: MetricLoss, labels, embeddings):
    """Similarities between the anchors and positives of the batch's pairs.

    The batch is cut into same-class pairs (anchor = first member, positive =
    second, see `pair_within_classes`). Entry (i, j) is anchor_i . positive_j,
    rows and columns indexed by batch position and valid only where
    `is_anchor` holds; with Symmetrical Synthesis the entries between
    different classes are the synthesised hardest similarities.

    Returns:
        (logits (B, B), anchor_dot_own_positive (B,), is_anchor (B,) bool,
        same_class (B, B) bool, stats dict).
    """
    partner, is_anchor, _ = pair_within_classes(labels)
    positives = tf.gather(embeddings, partner)
    logits = pairwise_dot(embeddings, positives)
    same = tf.equal(labels[:, None], labels[None, :])
    stats = {}
    if loss.symmetrical:
        negative, synthetic = loss._symmetrical_negatives(labels, embeddings)
        logits = tf.where(same, logits, negative)
        neg = tf.logical_not(same) & is_anchor[:, None] & is_anchor[None, :]
        stats["synthetic_fraction"] = safe_divide(
            tf.reduce_sum(tf.cast(synthetic & neg, tf.float32)),
            tf.reduce_sum(tf.cast(neg, tf.float32)),
        )
    own = tf.reduce_sum(embeddings * positives, axis=1)
    return logits, own, is_anchor, same, positives, stats


def _embedding_l2(embeddings, positives, is_anchor, weight: float):
    """0.25 * weight * (mean ||anchor||^2 + mean ||positive||^2) over the pairs."""
    rows = tf.cast(is_anchor, tf.float32)
    count = tf.reduce_sum(rows)
    sq_a = safe_divide(tf.reduce_sum(tf.reduce_sum(tf.square(embeddings), 1) * rows), count)
    sq_p = safe_divide(tf.reduce_sum(tf.reduce_sum(tf.square(positives), 1) * rows), count)
    return 0.25 * weight * (sq_a + sq_p)


@keras.saving.register_keras_serializable(package="tfdnc")
class NPairLoss(MetricLoss):
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
        symmetrical, symm_rule: Symmetrical Synthesis: the logit between
            pairs of different classes becomes the hardest similarity
            between their originals and synthetics (the authors applied
            Symm first to this loss; `symm_rule="code"` is their code's rule).

    Example:
    >>> loss = NPairLoss(symmetrical=True)
    >>> value = loss(tf.constant([0, 0, 1, 1, 2, 2]), tf.random.normal((6, 16)))
    """

    expects_normalized = False
    _higher_is_harder = True

    def __init__(
        self,
        l2_regularization: float = 0.002,
        symmetrical: bool = False,
        symm_rule: str = "paper",
        name: str = "npair_loss",
        **kwargs,
    ):
        super().__init__(symmetrical=symmetrical, symm_rule=symm_rule, name=name, **kwargs)
        if l2_regularization < 0:
            raise ValueError(f"NPairLoss: `l2_regularization` must be >= 0, got {l2_regularization}")
        self.l2_regularization = float(l2_regularization)

    def _pairwise(self, x, y):
        return pairwise_dot(x, y)

    def _compute(self, labels, embeddings):
        logits, own, is_anchor, same, positives, stats = _anchor_positive_logits(
            self, labels, embeddings
        )
        cols = is_anchor[None, :]
        lowest = tf.fill(tf.shape(logits), tf.constant(-1e30, logits.dtype))
        log_prob = tf.nn.log_softmax(tf.where(cols, logits, lowest), axis=1)
        target = tf.cast(same & cols, tf.float32)
        target = safe_divide(target, tf.reduce_sum(target, axis=1, keepdims=True))
        # Mask before multiplying: log_prob is ~-1e30 in masked columns.
        ce = -tf.reduce_sum(tf.where(target > 0, target * log_prob, 0.0), axis=1)
        rows = tf.cast(is_anchor, tf.float32)
        num_rows = tf.reduce_sum(rows)
        loss = safe_divide(tf.reduce_sum(ce * rows), num_rows)
        loss += _embedding_l2(embeddings, positives, is_anchor, self.l2_regularization)
        neg = tf.logical_not(same) & cols & is_anchor[:, None]
        violated = neg & (logits >= own[:, None])
        active = safe_divide(
            tf.reduce_sum(tf.cast(violated, tf.float32)), tf.reduce_sum(tf.cast(neg, tf.float32))
        )
        return loss, {**stats, "active_fraction": active}

    def get_config(self) -> dict:
        return {**super().get_config(), "l2_regularization": self.l2_regularization}
