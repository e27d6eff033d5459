"""Triplet miners: which (anchor, positive, negative) triplets a loss looks at.

All take a (B, N) distance matrix (lower is closer) and return a
:class:`TripletSelection`.

Examples:
    >>> from tfdnc.distances import pairwise_euclidean
    >>> from tfdnc.miners import label_masks
    >>> labels = tf.constant([0, 0, 1, 1])
    >>> x = tf.math.l2_normalize(tf.random.normal((4, 8)), axis=1)
    >>> d = pairwise_euclidean(x)
    >>> pos, neg = label_masks(labels)
    >>> selection = BatchHardMiner()(d, pos, neg)   # one triplet per anchor
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfdnc.miners.base import Miner, TripletSelection
from tfdnc.miners.selection import (
    batch_hard,
    closest_negatives_beyond_cutoff,
    distance_weighted_sample,
    semi_hard_negatives,
)


def _ratio(numerator, denominator):
    return tf.math.divide_no_nan(numerator, tf.cast(denominator, numerator.dtype))


@keras.saving.register_keras_serializable(package="tfdnc")
class AllTripletsMiner(Miner):
    """Every valid triplet: (a, p, n) with p a positive and n a negative of a ("batch_all")."""

    def __call__(self, matrix, positive_mask, negative_mask, dim=None):
        mask = positive_mask[:, :, None] & negative_mask[:, None, :]
        return TripletSelection(matrix[:, :, None], matrix[:, None, :], mask)


@keras.saving.register_keras_serializable(package="tfdnc")
class BatchHardMiner(Miner):
    """Per anchor the farthest positive and the closest negative (Hermans et al. 2017)."""

    def __call__(self, matrix, positive_mask, negative_mask, dim=None):
        hardest_pos, hardest_neg, valid = batch_hard(matrix, positive_mask, negative_mask)
        return TripletSelection(hardest_pos, hardest_neg, valid)


@keras.saving.register_keras_serializable(package="tfdnc")
class SemiHardMiner(Miner):
    """Per anchor-positive pair the closest negative farther than the positive (FaceNet).

    Where no negative is farther than the positive, the farthest negative is
    used (as TensorFlow's classic `triplet_semihard_loss`).
    """

    def __call__(self, matrix, positive_mask, negative_mask, dim=None):
        d_an = semi_hard_negatives(matrix, negative_mask)
        has_neg = tf.reduce_any(negative_mask, axis=1, keepdims=True)
        return TripletSelection(matrix, d_an, positive_mask & has_neg)


@keras.saving.register_keras_serializable(package="tfdnc")
class DistanceWeightedMiner(Miner):
    """One negative per anchor-positive pair, drawn by distance-weighted sampling (Wu et al. 2017).

    See :func:`tfdnc.miners.selection.distance_weighted_sample`; `dim` (the
    embedding size) must be given at call time. Distances are Euclidean
    between L2-normalised embeddings.

    Args:
        cutoff: lower clamp of the distances in the weights.
        nonzero_loss_cutoff: negatives at this distance or farther are never drawn.
        seed: int or None, seeds a `keras.random.SeedGenerator`.
    """

    def __init__(self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4, seed: int | None = None):
        if cutoff <= 0 or nonzero_loss_cutoff <= cutoff:
            raise ValueError(
                "DistanceWeightedMiner: need 0 < `cutoff` < `nonzero_loss_cutoff`, got "
                f"cutoff={cutoff}, nonzero_loss_cutoff={nonzero_loss_cutoff}"
            )
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed)

    def negatives(self, matrix, negative_mask, dim: int):
        """(negative_index (B, N), has_negative (B,)): column p of row a is the negative of (a, p)."""
        if dim is None:
            raise ValueError("DistanceWeightedMiner: the embedding size `dim` must be static")
        n = matrix.shape[1] if matrix.shape[1] is not None else tf.shape(matrix)[1]
        return distance_weighted_sample(
            tf.stop_gradient(matrix),
            negative_mask,
            dim=dim,
            num_samples=n,
            seed=self._seed_generator,
            cutoff=self.cutoff,
            nonzero_loss_cutoff=self.nonzero_loss_cutoff,
        )

    def __call__(self, matrix, positive_mask, negative_mask, dim=None):
        index, has_neg = self.negatives(matrix, negative_mask, dim)
        d_an = tf.gather(matrix, index, batch_dims=1)
        return TripletSelection(matrix, d_an, positive_mask & has_neg[:, None])

    def get_config(self) -> dict:
        return {"cutoff": self.cutoff, "nonzero_loss_cutoff": self.nonzero_loss_cutoff, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tfdnc")
class ClosestBeyondCutoffMiner(Miner):
    """The CVPR 2019 D&C code's negatives: each anchor's closest negatives at distance >= `cutoff`.

    See :func:`tfdnc.miners.selection.closest_negatives_beyond_cutoff` (and
    CompVis/metric-learning-divide-and-conquer: lib/loss/sampler.py:25-98).
    Deterministic. Its stats hold "below_cutoff_fraction": the triplets whose
    negative had to come from below the cutoff.
    """

    def __init__(self, cutoff: float = 0.5):
        if cutoff <= 0:
            raise ValueError(f"ClosestBeyondCutoffMiner: `cutoff` must be > 0, got {cutoff}")
        self.cutoff = float(cutoff)

    def __call__(self, matrix, positive_mask, negative_mask, dim=None):
        index, valid, below = closest_negatives_beyond_cutoff(
            tf.stop_gradient(matrix), positive_mask, negative_mask, cutoff=self.cutoff
        )
        d_an = tf.gather(matrix, index, batch_dims=1)
        below_fraction = _ratio(
            tf.reduce_sum(tf.cast(below, tf.float32)), tf.reduce_sum(tf.cast(valid, tf.float32))
        )
        return TripletSelection(matrix, d_an, valid, {"below_cutoff_fraction": below_fraction})

    def get_config(self) -> dict:
        return {"cutoff": self.cutoff}
