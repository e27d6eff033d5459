"""Triplet loss with batch-all, batch-hard or semi-hard mining (or any triplet miner)."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfdnc.losses.base import Batch, LossNeeds, MetricLoss, register_loss, safe_divide
from tfdnc.losses.reducers import get_reducer
from tfdnc.miners import AllTripletsMiner, BatchHardMiner, Miner, SemiHardMiner, deserialize_miner

MININGS = {"batch_all": AllTripletsMiner, "batch_hard": BatchHardMiner, "semi_hard": SemiHardMiner}


@register_loss("triplet")
class TripletLoss(MetricLoss):
    """[d(a, p) - d(a, n) + margin]+ over triplets chosen by a miner.

    Mining (`mining=` by name, or any triplet miner with `miner=`):
        "batch_all": every valid triplet; mean over the non-zero terms.
        "batch_hard": per anchor the farthest positive and the closest
            negative (Hermans et al. 2017); mean over anchors.
        "semi_hard": per anchor-positive pair the closest negative farther
            than the positive, else the farthest negative (FaceNet, as in
            TensorFlow's classic `triplet_semihard_loss`); mean over pairs.

    Soft margin (`soft_margin=True`, Hermans et al. 2017): each term is
    log(1 + exp(d(a, p) - d(a, n))) instead of the hinge; `margin` is unused.

    Args:
        margin: the triplet margin.
        mining: "batch_all", "batch_hard" or "semi_hard".
        distance: "euclidean", "squared_euclidean", "cosine" (1 - cos) or a
            `tfdnc.distances.Distance` (a distance, not a similarity).
        soft_margin: softplus instead of the hinge.
        miner: a `tfdnc.miners` triplet miner; overrides `mining`.
        reducer: see `MetricLoss` (default: "avg_non_zero" for all triplets,
            "mean" otherwise).
        symmetrical, symm_rule: Symmetrical Synthesis of the negatives.

    Examples:
        >>> loss = TripletLoss(margin=0.2, mining="semi_hard")
        >>> labels = tf.constant([0, 0, 1, 1, 2, 2])
        >>> embeddings = tf.random.normal((6, 16), seed=0)
        >>> loss = TripletLoss(mining="batch_hard", soft_margin=True)
        >>> value = loss(labels, tf.math.l2_normalize(embeddings, axis=1))
        >>> value.shape
        TensorShape([])
    """

    NEEDS = LossNeeds(reference=True)

    def __init__(
        self,
        margin: float = 0.2,
        mining: str = "batch_all",
        distance="euclidean",
        soft_margin: bool = False,
        miner: Miner | dict | None = None,
        reducer=None,
        symmetrical: bool = False,
        symm_rule: str = "paper",
        name: str = "triplet_loss",
        **kwargs,
    ):
        super().__init__(symmetrical=symmetrical, symm_rule=symm_rule, reducer=reducer, distance=distance, name=name,
                         **kwargs)
        if margin < 0:
            raise ValueError(f"TripletLoss: `margin` must be >= 0, got {margin}")
        if mining not in MININGS:
            raise ValueError(f"TripletLoss: `mining` must be one of {tuple(MININGS)}, got {mining!r}")
        self.margin = float(margin)
        self.mining = mining
        self.soft_margin = bool(soft_margin)
        self._miner_arg = deserialize_miner(miner)
        self.miner = self._miner_arg or MININGS[mining]()
        if reducer is None:
            all_triplets = isinstance(self.miner, AllTripletsMiner)
            self.reducer = get_reducer("avg_non_zero" if all_triplets else "mean")

    def compute(self, batch: Batch):
        sample_weight = batch.sample_weight
        d, pos_mask, neg_mask, stats = self._pairs(batch.labels, batch.embeddings, batch.reference)
        selection = self.pick_miner(batch)(d, pos_mask, neg_mask, dim=batch.embeddings.shape[-1])
        gap = selection.positive - selection.negative
        terms = tf.math.softplus(gap) if self.soft_margin else tf.nn.relu(gap + self.margin)
        valid = tf.cast(tf.broadcast_to(selection.mask, tf.shape(terms)), tf.float32)
        terms = terms * valid
        loss = self.reducer(terms, valid, sample_weight)
        num_active = tf.reduce_sum(tf.cast(terms > 0, tf.float32))
        active = safe_divide(num_active, tf.reduce_sum(valid))
        return loss, {**stats, **selection.stats, "active_fraction": active}

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "margin": self.margin,
            "mining": self.mining,
            "soft_margin": self.soft_margin,
            "miner": None if self._miner_arg is None else keras.saving.serialize_keras_object(self._miner_arg),
        }
