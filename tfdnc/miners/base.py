"""What a miner returns, and the base class of the miners.

A miner looks at a (B, N) distance or similarity matrix between the anchors of
a batch and N candidates (the batch itself, N = B, or a batch plus a memory)
and the boolean positive / negative masks of those entries, and chooses the
tuples a loss is computed on. The loss consumes the selection: it never mines
itself, so a miner can be swapped without touching the loss's formula.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tensorflow as tf


@dataclass(frozen=True)
class TripletSelection:
    """Triplets as broadcastable tensors: axis 0 is always the anchor.

    `positive` and `negative` broadcast to the shape of `mask`; the loss of an
    element is a function of (positive[e], negative[e]) where `mask[e]` holds.
    E.g. all triplets: positive (B, N, 1), negative (B, 1, N), mask (B, N, N);
    batch-hard: (B,), (B,), (B,).

    Attributes:
        positive: anchor-positive distances (or similarities).
        negative: anchor-negative distances (or similarities).
        mask: bool, the valid triplets.
        stats: extra scalar statistics of the mining (e.g. "below_cutoff_fraction").
    """

    positive: tf.Tensor
    negative: tf.Tensor
    mask: tf.Tensor
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PairSelection:
    """Pairs as (B, N) boolean masks of the chosen positive and negative entries."""

    positive_mask: tf.Tensor
    negative_mask: tf.Tensor


class Configurable:
    """A plain (non-Keras) object rebuilt from its constructor arguments: miners and reducers."""

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Miner(Configurable):
    """Base class: `miner(matrix, positive_mask, negative_mask, dim=None)` -> a selection.

    Subclasses implement `__call__` and `get_config` (plain constructor
    arguments); miners hold no variables, except a seed generator where they draw.

    Args of `__call__`:
        matrix: (B, N) distances (triplet miners) or similarities (pair
            miners that say so).
        positive_mask, negative_mask: (B, N) bool.
        dim: the embedding size (needed by distance-weighted sampling).
    """

    def __call__(self, matrix, positive_mask, negative_mask, dim: int | None = None):
        raise NotImplementedError
