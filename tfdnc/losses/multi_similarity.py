"""Multi-Similarity loss with its pair mining (Wang et al., CVPR 2019)."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfdnc.losses.base import Batch, LossNeeds, MetricLoss, log1p_sum_exp, register_loss, safe_divide
from tfdnc.miners import Miner, MultiSimilarityMiner, deserialize_miner


@register_loss("multi_similarity")
class MultiSimilarityLoss(MetricLoss):
    """Multi-Similarity loss on cosine similarities S.

    Pairs are mined per anchor i: a negative k is kept if S_ik + epsilon >
    the smallest positive similarity of i, a positive j if S_ij - epsilon < the
    largest negative similarity. Then

        L_i = 1/alpha log(1 + sum_j exp(-alpha (S_ij - base)))
            + 1/beta  log(1 + sum_k exp( beta (S_ik - base)))

    over the kept pairs; anchors with no kept positive or no kept negative add
    0, and the sum is divided by the batch size (as the authors' code does;
    the default reducer "mean" over the anchors, those without terms as 0).

    Args:
        alpha: scale of the positive term.
        beta: scale of the negative term.
        base: similarity offset (lambda in the paper).
        epsilon: mining margin (of the default miner).
        miner: a pair miner on cosine similarities (default:
            `MultiSimilarityMiner(epsilon)`).
        reducer: see `MetricLoss`; the elements are the anchors.
        symmetrical, symm_rule: Symmetrical Synthesis of the negatives.

    Examples:
        >>> loss = MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
        >>> labels = tf.constant([0, 0, 1, 1, 2, 2])
        >>> embeddings = tf.random.normal((6, 16), seed=0)
        >>> value = loss(labels, tf.math.l2_normalize(embeddings, axis=1))
        >>> value.shape
        TensorShape([])
    """

    NEEDS = LossNeeds(reference=True)
    default_distance = "cosine_similarity"

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
        epsilon: float = 0.1,
        miner: Miner | dict | None = None,
        reducer=None,
        symmetrical: bool = False,
        symm_rule: str = "paper",
        name: str = "multi_similarity_loss",
        **kwargs,
    ):
        super().__init__(symmetrical=symmetrical, symm_rule=symm_rule, reducer=reducer, name=name, **kwargs)
        if alpha <= 0 or beta <= 0:
            raise ValueError(
                f"MultiSimilarityLoss: `alpha` and `beta` must be > 0, got {alpha}, {beta}"
            )
        if epsilon < 0:
            raise ValueError(f"MultiSimilarityLoss: `epsilon` must be >= 0, got {epsilon}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.base = float(base)
        self.epsilon = float(epsilon)
        self._miner_arg = deserialize_miner(miner)
        self.miner = self._miner_arg or MultiSimilarityMiner(self.epsilon)

    def compute(self, batch: Batch):
        sample_weight = batch.sample_weight
        s, pos_mask, neg_mask, stats = self._pairs(batch.labels, batch.embeddings, batch.reference)
        pairs = self.pick_miner(batch)(s, pos_mask, neg_mask)
        keep_pos, keep_neg = pairs.positive_mask, pairs.negative_mask
        pos_term = log1p_sum_exp(-self.alpha * (s - self.base), keep_pos) / self.alpha
        neg_term = log1p_sum_exp(self.beta * (s - self.base), keep_neg) / self.beta
        anchor_on = tf.reduce_any(keep_pos, axis=1) & tf.reduce_any(keep_neg, axis=1)
        on = tf.cast(anchor_on, tf.float32)
        loss = self.reducer((pos_term + neg_term) * on, None, sample_weight)
        kept = tf.cast(keep_pos | keep_neg, tf.float32) * on[:, None]
        candidates = tf.cast(pos_mask | neg_mask, tf.float32)
        active = safe_divide(tf.reduce_sum(kept), tf.reduce_sum(candidates))
        return loss, {**stats, "active_fraction": active}

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "beta": self.beta,
            "base": self.base,
            "epsilon": self.epsilon,
            "miner": None if self._miner_arg is None else keras.saving.serialize_keras_object(self._miner_arg),
        }
