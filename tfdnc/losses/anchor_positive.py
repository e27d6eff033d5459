"""Base of the losses on the batch's same-class (anchor, positive) pairs: N-pair and Angular."""

from __future__ import annotations

import tensorflow as tf

from tfdnc.losses.base import LossNeeds, MetricLoss, safe_divide
from tfdnc.losses.synthesis import pair_within_classes


class AnchorPositiveLoss(MetricLoss):
    """A loss over anchor . positive similarities of the batch's same-class pairs.

    The batch is cut into same-class pairs (anchor = first member, positive =
    second, see `pair_within_classes`); subclasses (:class:`NPairLoss`,
    :class:`AngularLoss`) set `l2_regularization` and use the two helpers.
    Not for a reference set (XBM): the pairs are built inside the batch.
    """

    NEEDS = LossNeeds(normalized=False)
    default_distance = "dot"
    l2_regularization: float = 0.0

    def _anchor_positive_logits(self, labels, embeddings):
        """Similarities between the anchors and positives of the batch's pairs.

        Entry (i, j) is anchor_i . positive_j, rows and columns indexed by
        batch position and valid only where `is_anchor` holds; with
        Symmetrical Synthesis the entries between different classes are the
        synthesised hardest similarities.

        Returns:
            (logits (B, B), anchor_dot_own_positive (B,), is_anchor (B,) bool,
            same_class (B, B) bool, positives (B, D), stats dict).
        """
        partner, is_anchor, _ = pair_within_classes(labels)
        positives = tf.gather(embeddings, partner)
        logits = self.distance(embeddings, positives)
        same = tf.equal(labels[:, None], labels[None, :])
        stats = {}
        if self.symmetrical:
            counted = tf.logical_not(same) & is_anchor[:, None] & is_anchor[None, :]
            logits, stats = self._synthetic_negatives(labels, embeddings, logits, counted)
        own = tf.reduce_sum(embeddings * positives, axis=1)
        return logits, own, is_anchor, same, positives, stats

    def _embedding_l2(self, embeddings, positives, is_anchor):
        """0.25 * l2_regularization * (mean ||anchor||^2 + mean ||positive||^2) over the pairs."""
        rows = tf.cast(is_anchor, tf.float32)
        count = tf.reduce_sum(rows)
        sq_a = safe_divide(tf.reduce_sum(tf.reduce_sum(tf.square(embeddings), 1) * rows), count)
        sq_p = safe_divide(tf.reduce_sum(tf.reduce_sum(tf.square(positives), 1) * rows), count)
        return 0.25 * self.l2_regularization * (sq_a + sq_p)
