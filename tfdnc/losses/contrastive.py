"""Contrastive loss (Hadsell et al. 2006) on all pairs of the batch."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfdnc.distances import pairwise_euclidean
from tfdnc.losses.base import MetricLoss, safe_divide
from tfdnc.miners import label_masks


@keras.saving.register_keras_serializable(package="tfdnc")
class ContrastiveLoss(MetricLoss):
    """[d - pos_margin]+ on positive pairs plus [neg_margin - d]+ on negative pairs.

    Euclidean distances between L2-normalised embeddings; each of the two parts
    is averaged over its non-zero terms and the two are summed (as
    pytorch-metric-learning's default reducer does).

    Args:
        pos_margin: positives closer than this cost nothing.
        neg_margin: negatives farther than this cost nothing.
        symmetrical, symm_rule: Symmetrical Synthesis of the negatives.

    Example:
    >>> loss = ContrastiveLoss(pos_margin=0.0, neg_margin=0.5)
    >>> value = loss(labels, l2_normalize(embeddings))
    """

    expects_normalized = True
    _higher_is_harder = False

    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float = 0.5,
        symmetrical: bool = False,
        symm_rule: str = "paper",
        name: str = "contrastive_loss",
        **kwargs,
    ):
        super().__init__(symmetrical=symmetrical, symm_rule=symm_rule, name=name, **kwargs)
        if pos_margin < 0 or neg_margin <= pos_margin:
            raise ValueError(
                "ContrastiveLoss: need 0 <= `pos_margin` < `neg_margin`, got "
                f"pos_margin={pos_margin}, neg_margin={neg_margin}"
            )
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)

    def _pairwise(self, x, y):
        return pairwise_euclidean(x, y)

    def _compute(self, labels, embeddings):
        pos_mask, neg_mask = label_masks(labels)
        d, stats = self._pair_matrix(labels, embeddings, pos_mask)
        pos = tf.cast(pos_mask, tf.float32)
        neg = tf.cast(neg_mask, tf.float32)
        pos_terms = tf.nn.relu(d - self.pos_margin) * pos
        neg_terms = tf.nn.relu(self.neg_margin - d) * neg
        pos_on = tf.reduce_sum(tf.cast(pos_terms > 0, tf.float32))
        neg_on = tf.reduce_sum(tf.cast(neg_terms > 0, tf.float32))
        loss = safe_divide(tf.reduce_sum(pos_terms), pos_on) + safe_divide(
            tf.reduce_sum(neg_terms), neg_on
        )
        active = safe_divide(pos_on + neg_on, tf.reduce_sum(pos) + tf.reduce_sum(neg))
        return loss, {**stats, "active_fraction": active}

    def get_config(self) -> dict:
        return {**super().get_config(), "pos_margin": self.pos_margin, "neg_margin": self.neg_margin}
