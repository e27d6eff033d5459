"""Lifted structured loss (Song et al., CVPR 2016)."""

from __future__ import annotations

import tensorflow as tf

from tfdnc.losses.base import Batch, MetricLoss, register_loss, safe_divide


@register_loss("lifted")
class LiftedStructureLoss(MetricLoss):
    """Smooth hardest-negative loss over every positive pair of the batch.

    For each positive pair (i, j), with D the Euclidean distances between
    L2-normalised embeddings and N(i) the negatives of i:

        J_ij = log(sum_{k in N(i)} exp(margin - D_ik) + sum_{l in N(j)} exp(margin - D_jl)) + D_ij
        L = 1 / (2 |P|) sum_{(i, j) in P} [J_ij]+^2

    (the default reducer "mean" of [J_ij]+^2 / 2 over the ordered positive pairs).

    Args:
        margin: the margin (alpha in the paper).
        reducer: see `MetricLoss`.
        symmetrical, symm_rule: Symmetrical Synthesis of the negatives.

    Examples:
        >>> loss = LiftedStructureLoss(margin=1.0)
        >>> labels = tf.constant([0, 0, 1, 1, 2, 2])
        >>> embeddings = tf.random.normal((6, 16), seed=0)
        >>> value = loss(labels, tf.math.l2_normalize(embeddings, axis=1))
        >>> value.shape
        TensorShape([])
    """

    def __init__(
        self,
        margin: float = 1.0,
        symmetrical: bool = False,
        symm_rule: str = "paper",
        reducer=None,
        name: str = "lifted_structure_loss",
        **kwargs,
    ):
        super().__init__(symmetrical=symmetrical, symm_rule=symm_rule, reducer=reducer, name=name, **kwargs)
        if margin < 0:
            raise ValueError(f"LiftedStructureLoss: `margin` must be >= 0, got {margin}")
        self.margin = float(margin)

    def compute(self, batch: Batch):
        sample_weight = batch.sample_weight
        d, pos_mask, neg_mask, stats = self._pairs(batch.labels, batch.embeddings)
        has_neg = tf.reduce_any(neg_mask, axis=1)
        neg_inf = tf.fill(tf.shape(d), tf.constant(-float("inf"), d.dtype))
        # log-sum-exp over each row's negatives; rows without any get 0 and
        # are masked out below (keeps the gradient free of inf - inf).
        lse = tf.reduce_logsumexp(tf.where(neg_mask, self.margin - d, neg_inf), axis=1)
        lse = tf.where(has_neg, lse, tf.zeros_like(lse))
        j = tf.reduce_logsumexp(tf.stack([
            tf.broadcast_to(lse[:, None], tf.shape(d)),
            tf.broadcast_to(lse[None, :], tf.shape(d)),
        ]), axis=0) + d
        valid = pos_mask & has_neg[:, None]
        valid_f = tf.cast(valid, tf.float32)
        terms = tf.square(tf.nn.relu(j)) * valid_f
        num_pairs = tf.reduce_sum(valid_f)  # ordered pairs = 2 |P|
        # 1 / (2 |P|) sum over unordered pairs = the mean of J^2 / 2 over ordered ones
        loss = self.reducer(0.5 * terms, valid, sample_weight)
        active = safe_divide(tf.reduce_sum(tf.cast(terms > 0, tf.float32)), num_pairs)
        return loss, {**stats, "active_fraction": active}

    def get_config(self) -> dict:
        return {**super().get_config(), "margin": self.margin}
