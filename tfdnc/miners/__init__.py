"""Miners: objects that choose the pairs or triplets a loss is computed on.

A miner takes a (B, N) distance or similarity matrix and the positive /
negative masks, and returns a :class:`TripletSelection` or a
:class:`PairSelection`; losses take a `miner=` argument. The selection
functions the miners are built on live in :mod:`tfdnc.miners.selection`.

Examples:
    >>> from tfdnc.distances import pairwise_euclidean
    >>> from tfdnc.losses import TripletLoss
    >>> labels = tf.constant([0, 0, 1, 1])
    >>> x = tf.math.l2_normalize(tf.random.normal((4, 8)), axis=1)
    >>> loss = TripletLoss(miner=SemiHardMiner())   # same as mining="semi_hard"
    >>> pos, neg = label_masks(labels)
    >>> triplets = BatchHardMiner()(pairwise_euclidean(x), pos, neg)
"""

from __future__ import annotations

import keras

from tfdnc.miners.base import Miner, PairSelection, TripletSelection
from tfdnc.miners.pairs import AllPairsMiner, MultiSimilarityMiner
from tfdnc.miners.selection import (
    batch_hard,
    closest_negatives_beyond_cutoff,
    distance_weighted_log_weights,
    distance_weighted_sample,
    label_masks,
    masked_max,
    masked_min,
    multi_similarity_pairs,
    reference_masks,
    semi_hard_negatives,
)
from tfdnc.miners.triplets import (
    AllTripletsMiner,
    BatchHardMiner,
    ClosestBeyondCutoffMiner,
    DistanceWeightedMiner,
    SemiHardMiner,
)


def deserialize_miner(miner) -> Miner | None:
    """A miner from a `Miner`, its Keras-serialised dict, or None."""
    if miner is None or isinstance(miner, Miner):
        return miner
    if isinstance(miner, dict):
        return keras.saving.deserialize_keras_object(miner)
    raise ValueError(f"`miner` must be a tfdnc.miners.Miner, its serialised config or None, got {miner!r}")


__all__ = [
    "AllPairsMiner",
    "AllTripletsMiner",
    "BatchHardMiner",
    "ClosestBeyondCutoffMiner",
    "DistanceWeightedMiner",
    "Miner",
    "MultiSimilarityMiner",
    "PairSelection",
    "SemiHardMiner",
    "TripletSelection",
    "batch_hard",
    "closest_negatives_beyond_cutoff",
    "deserialize_miner",
    "distance_weighted_log_weights",
    "distance_weighted_sample",
    "label_masks",
    "masked_max",
    "masked_min",
    "multi_similarity_pairs",
    "reference_masks",
    "semi_hard_negatives",
]
