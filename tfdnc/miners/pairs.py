"""Pair miners: which positive and negative pairs a pair-based loss looks at.

Examples:
    >>> from tfdnc.distances import pairwise_cosine_similarity
    >>> from tfdnc.miners import label_masks
    >>> labels = tf.constant([0, 0, 1, 1])
    >>> x = tf.random.normal((4, 8))
    >>> s = pairwise_cosine_similarity(x)
    >>> pos, neg = label_masks(labels)
    >>> pairs = MultiSimilarityMiner(epsilon=0.1)(s, pos, neg)
"""

from __future__ import annotations

import keras

from tfdnc.miners.base import Miner, PairSelection
from tfdnc.miners.selection import multi_similarity_pairs


@keras.saving.register_keras_serializable(package="tfdnc")
class AllPairsMiner(Miner):
    """Every positive and every negative pair."""

    def __call__(self, matrix, positive_mask, negative_mask, dim=None):
        return PairSelection(positive_mask, negative_mask)


@keras.saving.register_keras_serializable(package="tfdnc")
class MultiSimilarityMiner(Miner):
    """The Multi-Similarity loss's pair mining (Wang et al. 2019), on similarities.

    A negative k of anchor i is kept if S_ik + epsilon > the smallest positive
    similarity of i; a positive j if S_ij - epsilon < the largest negative one.

    Args:
        epsilon: the mining margin (>= 0).
    """

    def __init__(self, epsilon: float = 0.1):
        if epsilon < 0:
            raise ValueError(f"MultiSimilarityMiner: `epsilon` must be >= 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def __call__(self, matrix, positive_mask, negative_mask, dim=None):
        keep_pos, keep_neg = multi_similarity_pairs(matrix, positive_mask, negative_mask, self.epsilon)
        return PairSelection(keep_pos, keep_neg)

    def get_config(self) -> dict:
        return {"epsilon": self.epsilon}
