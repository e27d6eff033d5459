"""Angular loss (Wang et al., ICCV 2017) on the batch's same-class pairs."""

from __future__ import annotations

import math

import tensorflow as tf

from tfdnc.losses.anchor_positive import AnchorPositiveLoss
from tfdnc.losses.base import Batch, register_loss, safe_divide


@register_loss("angular")
class AngularLoss(AnchorPositiveLoss):
    """Angular loss in its N-pair form.

    The batch is cut into same-class pairs (a, p) as in :class:`NPairLoss`;
    the negatives of pair i are the positives n of the pairs of other classes.
    With t = tan(alpha),

        f(a, p, n) = 4 t^2 (a + p) . n - 2 (1 + t^2) a . p
        L_i = log(1 + sum_n exp(f(a_i, p_i, n)))

    averaged over pairs, plus the N-pair embedding L2 penalty. Embeddings are
    not normalised. With Symmetrical Synthesis both negative similarities a . n
    and p . n become the hardest similarity between the two pairs' originals
    and synthetics.

    Args:
        alpha: the angle bound in degrees (0 < alpha < 90).
        l2_regularization: weight of the embedding-norm penalty.
        reducer: see `MetricLoss` (the elements are the anchors; default "mean").
        symmetrical, symm_rule: Symmetrical Synthesis of the negatives.

    Examples:
        >>> loss = AngularLoss(alpha=40)
        >>> value = loss(tf.constant([0, 0, 1, 1, 2, 2]), tf.random.normal((6, 16)))
    """

    def __init__(
        self,
        alpha: float = 40.0,
        l2_regularization: float = 0.002,
        symmetrical: bool = False,
        symm_rule: str = "paper",
        reducer=None,
        name: str = "angular_loss",
        **kwargs,
    ):
        super().__init__(symmetrical=symmetrical, symm_rule=symm_rule, reducer=reducer, name=name, **kwargs)
        if not 0 < alpha < 90:
            raise ValueError(f"AngularLoss: `alpha` must be in (0, 90) degrees, got {alpha}")
        if l2_regularization < 0:
            raise ValueError(
                f"AngularLoss: `l2_regularization` must be >= 0, got {l2_regularization}"
            )
        self.alpha = float(alpha)
        self.l2_regularization = float(l2_regularization)

    def compute(self, batch: Batch):
        labels, embeddings, sample_weight = batch.labels, batch.embeddings, batch.sample_weight
        # logits[i, j] = a_i . p_j (negatives synthesised when symmetrical)
        an, ap, is_anchor, same, positives, stats = self._anchor_positive_logits(labels, embeddings)
        pn = self.distance(positives, positives)
        if self.symmetrical:
            pn = tf.where(same, pn, an)  # both become the pair-vs-pair hardest value
        t2 = math.tan(math.radians(self.alpha)) ** 2
        f = 4.0 * t2 * (an + pn) - 2.0 * (1.0 + t2) * ap[:, None]
        neg = tf.logical_not(same) & is_anchor[None, :] & is_anchor[:, None]
        neg_inf = tf.fill(tf.shape(f), tf.constant(-float("inf"), f.dtype))
        per_row = tf.reduce_logsumexp(
            tf.concat([tf.zeros_like(f[:, :1]), tf.where(neg, f, neg_inf)], axis=1), axis=1
        )
        loss = self.reducer(per_row, is_anchor, sample_weight)
        loss += self._embedding_l2(embeddings, positives, is_anchor)
        active = safe_divide(
            tf.reduce_sum(tf.cast(neg & (f > 0), tf.float32)),
            tf.reduce_sum(tf.cast(neg, tf.float32)),
        )
        return loss, {**stats, "active_fraction": active}

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "l2_regularization": self.l2_regularization,
        }
