"""Reducers: how a loss turns its per-element terms into the scalar it returns.

A loss computes one term per element it considers (a triplet, a pair, an
anchor, a proxy) and hands the terms, their validity mask and optional
per-sample weights to its reducer. Every loss has a default reducer that gives
the formula of its paper / reference code; `reducer=` swaps it.

Per-sample weights: `loss(labels, embeddings, sample_weight=w)` with w of
shape (B,) weighs every element by the weight of its anchor (axis 0 of the
terms is always the anchor).

Why not Keras's `reduction`: Keras reduces a vector of per-sample losses, but
a metric loss's terms are per pair / triplet and its normalisation is part of
the method (the margin loss divides by the number of non-zero terms); tfdnc
losses therefore take `reducer=` and refuse `reduction=`.

Examples:
    >>> from tfdnc.losses import ContrastiveLoss, TripletLoss
    >>> loss = TripletLoss(mining="batch_all", reducer="mean")   # mean over all valid triplets
    >>> loss = ContrastiveLoss(reducer=SumReducer())
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfdnc.miners.base import Configurable


def _weights_like(terms, sample_weight):
    """(B,) weights reshaped to broadcast over `terms` (axis 0 the anchor)."""
    w = tf.cast(tf.reshape(sample_weight, [-1]), terms.dtype)
    return tf.reshape(w, tf.concat([tf.shape(w), tf.ones([tf.rank(terms) - 1], tf.int32)], 0))


class Reducer(Configurable):
    """Base class: `reducer(terms, mask=None, sample_weight=None)` -> scalar.

    `numerator / denominator` with numerator = sum(w * terms * mask);
    subclasses define the denominator.

    Args of `__call__`:
        terms: per-element losses, axis 0 the anchor.
        mask: bool, broadcastable to `terms`; elements outside do not count.
        sample_weight: optional (B,) weight per anchor.
    """

    name = ""

    def __call__(self, terms, mask=None, sample_weight=None, extra=None):
        numerator, denominator = self.parts(terms, mask, sample_weight)
        if extra is not None:
            numerator = numerator + extra
        return tf.math.divide_no_nan(numerator, denominator)

    def parts(self, terms, mask=None, sample_weight=None):
        """(numerator, denominator) of the reduction."""
        terms = tf.convert_to_tensor(terms)
        mask = tf.ones_like(terms) if mask is None else tf.cast(tf.broadcast_to(mask, tf.shape(terms)), terms.dtype)
        weights = mask if sample_weight is None else mask * _weights_like(terms, sample_weight)
        return tf.reduce_sum(weights * terms), self.denominator(terms, mask, weights)

    def denominator(self, terms, mask, weights):
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="tfdnc")
class MeanReducer(Reducer):
    """Weighted mean over the valid elements: sum(w t) / sum(w)."""

    name = "mean"

    def denominator(self, terms, mask, weights):
        return tf.reduce_sum(weights)


@keras.saving.register_keras_serializable(package="tfdnc")
class AvgNonZeroReducer(Reducer):
    """Mean over the valid elements whose term is > 0 ("avg non-zero", pml's AvgNonZeroReducer).

    With weights: sum(w t) / sum(w [t > 0]).
    """

    name = "avg_non_zero"

    def denominator(self, terms, mask, weights):
        return tf.reduce_sum(weights * tf.cast(terms > 0, terms.dtype))


@keras.saving.register_keras_serializable(package="tfdnc")
class SumReducer(Reducer):
    """Sum of the (weighted) valid elements."""

    name = "sum"

    def denominator(self, terms, mask, weights):
        return tf.ones((), terms.dtype)


REDUCERS: dict[str, type[Reducer]] = {cls.name: cls for cls in (MeanReducer, AvgNonZeroReducer, SumReducer)}


def get_reducer(reducer) -> Reducer:
    """A reducer from a name ("mean", "avg_non_zero", "sum"), a `Reducer` or its serialised dict."""
    if isinstance(reducer, Reducer):
        return reducer
    if isinstance(reducer, dict):
        return keras.saving.deserialize_keras_object(reducer)
    key = str(reducer).lower().replace("-", "_")
    if key not in REDUCERS:
        raise ValueError(f"`reducer` must be one of {sorted(REDUCERS)} or a Reducer, got {reducer!r}")
    return REDUCERS[key]()
