"""Triplet loss with batch-all, batch-hard or semi-hard mining."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfdnc.distances import DISTANCES, pairwise_distance
from tfdnc.losses.base import MetricLoss, safe_divide
from tfdnc.miners import batch_hard, label_masks, semi_hard_negatives

MININGS = ("batch_all", "batch_hard", "semi_hard")


@keras.saving.register_keras_serializable(package="tfdnc")
class TripletLoss(MetricLoss):
    """[d(a, p) - d(a, n) + margin]+ over triplets mined in the batch.

    Mining:
        "batch_all": every valid triplet; mean over the non-zero terms.
        "batch_hard": per anchor the farthest positive and the closest
            negative (Hermans et al. 2017); mean over anchors.
        "semi_hard": per anchor-positive pair the closest negative farther
            than the positive, else the farthest negative (FaceNet, as in
            TensorFlow's classic `triplet_semihard_loss`); mean over pairs.

    Args:
        margin: the triplet margin.
        mining: "batch_all", "batch_hard" or "semi_hard".
        distance: "euclidean", "squared_euclidean" or "cosine" (1 - cos).
        symmetrical, symm_rule: Symmetrical Synthesis of the negatives.

    Example:
    >>> loss = TripletLoss(margin=0.2, mining="semi_hard")
    >>> value = loss(labels, l2_normalize(embeddings))
    """

    expects_normalized = True
    _higher_is_harder = False

    def __init__(
        self,
        margin: float = 0.2,
        mining: str = "batch_all",
        distance: str = "euclidean",
        symmetrical: bool = False,
        symm_rule: str = "paper",
        name: str = "triplet_loss",
        **kwargs,
    ):
        super().__init__(symmetrical=symmetrical, symm_rule=symm_rule, name=name, **kwargs)
        if margin < 0:
            raise ValueError(f"TripletLoss: `margin` must be >= 0, got {margin}")
        if mining not in MININGS:
            raise ValueError(f"TripletLoss: `mining` must be one of {MININGS}, got {mining!r}")
        if distance not in DISTANCES:
            raise ValueError(
                f"TripletLoss: `distance` must be one of {DISTANCES}, got {distance!r}"
            )
        self.margin = float(margin)
        self.mining = mining
        self.distance = distance

    def _pairwise(self, x, y):
        return pairwise_distance(x, y, self.distance)

    def _compute(self, labels, embeddings):
        pos_mask, neg_mask = label_masks(labels)
        d, stats = self._pair_matrix(labels, embeddings, pos_mask)
        if self.mining == "batch_all":
            valid = tf.cast(pos_mask[:, :, None] & neg_mask[:, None, :], tf.float32)
            terms = tf.nn.relu(d[:, :, None] - d[:, None, :] + self.margin) * valid
        elif self.mining == "batch_hard":
            hardest_pos, hardest_neg, has_both = batch_hard(d, pos_mask, neg_mask)
            valid = tf.cast(has_both, tf.float32)
            terms = tf.nn.relu(hardest_pos - hardest_neg + self.margin) * valid
        else:
            d_an = semi_hard_negatives(d, neg_mask)
            has_neg = tf.reduce_any(neg_mask, axis=1, keepdims=True)
            valid = tf.cast(pos_mask & has_neg, tf.float32)
            terms = tf.nn.relu(d - d_an + self.margin) * valid
        num_active = tf.reduce_sum(tf.cast(terms > 0, tf.float32))
        num_valid = tf.reduce_sum(valid)
        denominator = num_active if self.mining == "batch_all" else num_valid
        loss = safe_divide(tf.reduce_sum(terms), denominator)
        return loss, {**stats, "active_fraction": safe_divide(num_active, num_valid)}

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "margin": self.margin,
            "mining": self.mining,
            "distance": self.distance,
        }
