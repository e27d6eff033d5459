"""Contrastive loss (Hadsell et al. 2006) on all pairs of the batch."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfdnc.losses.base import Batch, LossNeeds, MetricLoss, register_loss, safe_divide
from tfdnc.miners import AllPairsMiner, Miner, deserialize_miner


@register_loss("contrastive")
class ContrastiveLoss(MetricLoss):
    """[d - pos_margin]+ on positive pairs plus [neg_margin - d]+ on negative pairs.

    Euclidean distances between L2-normalised embeddings; each of the two parts
    is reduced on its own (default: averaged over its non-zero terms) and the
    two are summed (as pytorch-metric-learning's default reducer does).

    Args:
        pos_margin: positives closer than this cost nothing.
        neg_margin: negatives farther than this cost nothing.
        miner: a pair miner (default: all pairs).
        reducer: see `MetricLoss` (default "avg_non_zero", per part).
        symmetrical, symm_rule: Symmetrical Synthesis of the negatives.

    Examples:
        >>> loss = ContrastiveLoss(pos_margin=0.0, neg_margin=0.5)
        >>> labels = tf.constant([0, 0, 1, 1, 2, 2])
        >>> embeddings = tf.random.normal((6, 16), seed=0)
        >>> value = loss(labels, tf.math.l2_normalize(embeddings, axis=1))
        >>> value.shape
        TensorShape([])
    """

    NEEDS = LossNeeds(reference=True)
    default_reducer = "avg_non_zero"

    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float = 0.5,
        miner: Miner | dict | None = None,
        reducer=None,
        symmetrical: bool = False,
        symm_rule: str = "paper",
        name: str = "contrastive_loss",
        **kwargs,
    ):
        super().__init__(symmetrical=symmetrical, symm_rule=symm_rule, reducer=reducer, name=name, **kwargs)
        if pos_margin < 0 or neg_margin <= pos_margin:
            raise ValueError(
                "ContrastiveLoss: need 0 <= `pos_margin` < `neg_margin`, got "
                f"pos_margin={pos_margin}, neg_margin={neg_margin}"
            )
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)
        self._miner_arg = deserialize_miner(miner)
        self.miner = self._miner_arg or AllPairsMiner()

    def compute(self, batch: Batch):
        sample_weight = batch.sample_weight
        d, pos_mask, neg_mask, stats = self._pairs(batch.labels, batch.embeddings, batch.reference)
        pairs = self.pick_miner(batch)(d, pos_mask, neg_mask)
        pos = tf.cast(pairs.positive_mask, tf.float32)
        neg = tf.cast(pairs.negative_mask, tf.float32)
        pos_terms = tf.nn.relu(d - self.pos_margin) * pos
        neg_terms = tf.nn.relu(self.neg_margin - d) * neg
        loss = self.reducer(pos_terms, pos, sample_weight) + self.reducer(neg_terms, neg, sample_weight)
        pos_on = tf.reduce_sum(tf.cast(pos_terms > 0, tf.float32))
        neg_on = tf.reduce_sum(tf.cast(neg_terms > 0, tf.float32))
        active = safe_divide(pos_on + neg_on, tf.reduce_sum(pos) + tf.reduce_sum(neg))
        return loss, {**stats, "active_fraction": active}

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "pos_margin": self.pos_margin,
            "neg_margin": self.neg_margin,
            "miner": None if self._miner_arg is None else keras.saving.serialize_keras_object(self._miner_arg),
        }
