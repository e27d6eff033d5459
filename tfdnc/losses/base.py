"""Base class of the metric-learning losses."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfdnc.layers.synthesis import SYMM_RULES, hardest_negatives


def safe_divide(numerator, denominator):
    """numerator / denominator, 0 where the denominator is 0."""
    denominator = tf.cast(denominator, numerator.dtype)
    return tf.math.divide_no_nan(numerator, denominator)


@keras.saving.register_keras_serializable(package="tfdnc")
class LossParameters(keras.layers.Layer):
    """Holds a loss's learnable variables as Keras layer weights.

    A `keras.losses.Loss` is not tracked by a model, a layer is: the model keeps
    `loss.variables_layer` as an attribute, so the variables are saved,
    restored and checkpointed with the model's weights.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.built = True

    def call(self, inputs):
        return inputs


class MetricLoss(keras.losses.Loss):
    """A loss on a batch of embeddings and their integer class labels.

    Subclasses implement :meth:`_compute` on a (B,) int32 label vector and a
    (B, D) float32 embedding matrix, returning a scalar loss and a dict of
    scalar statistics that includes `"active_fraction"`: the fraction of the
    pairs / triplets the loss considers whose loss term is non-zero.

    The model feeds L2-normalised embeddings to losses with
    `expects_normalized = True` and the raw embedding otherwise.

    Symmetrical Synthesis (`symmetrical=True`): every negative distance or
    similarity between two samples is replaced by the hardest value between
    the four points of their pairs (originals and synthetics, see
    :mod:`tfdnc.layers.synthesis`); positives stay the originals.
    `symm_rule="paper"` takes the hardest of the 16 cross combinations,
    `"code"` the element-wise hardest over the authors' code's 6 set pairs.
    Subclasses declare how they compare points: `_pairwise(x, y)` (`y=None`
    compares `x` with itself) and
    `_higher_is_harder` (True for similarities, False for distances).

    Args:
        symmetrical: apply Symmetrical Synthesis to the negatives.
        symm_rule: "paper" or "code".
        name, reduction, dtype: as in `keras.losses.Loss`.
    """

    expects_normalized: bool = True
    supports_symmetrical: bool = True
    _higher_is_harder: bool = False

    def __init__(
        self,
        symmetrical: bool = False,
        symm_rule: str = "paper",
        name: str | None = None,
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if symm_rule not in SYMM_RULES:
            raise ValueError(
                f"{type(self).__name__}: `symm_rule` must be one of {SYMM_RULES}, got {symm_rule!r}"
            )
        if symmetrical and not self.supports_symmetrical:
            raise ValueError(f"{type(self).__name__} does not support `symmetrical=True`")
        self.symmetrical = bool(symmetrical)
        self.symm_rule = symm_rule

    # -- public API --------------------------------------------------------

    @property
    def trainable_variables(self) -> list:
        """Learnable parameters of the loss (empty for most losses)."""
        layer = self.variables_layer
        return list(layer.trainable_weights) if layer is not None else []

    @property
    def variables_layer(self) -> LossParameters | None:
        """The layer that owns the learnable variables (None without any)."""
        return getattr(self, "_variables_layer", None)

    def call(self, y_true, y_pred):
        loss, _ = self.compute_loss_and_stats(y_true, y_pred)
        return loss

    def compute_loss_and_stats(self, labels, embeddings) -> tuple[tf.Tensor, dict]:
        """Loss (float32 scalar) and statistics for one batch.

        Args:
            labels: (B,) or (B, 1) integer (or integer-valued float) labels.
            embeddings: (B, D) embeddings.
        """
        labels, embeddings = self._standardize(labels, embeddings)
        loss, stats = self._compute(labels, embeddings)
        return loss, stats

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "symmetrical": self.symmetrical,
            "symm_rule": self.symm_rule,
        }

    # -- for subclasses ------------------------------------------------------

    def _compute(self, labels, embeddings):
        raise NotImplementedError

    def _pairwise(self, x, y):
        raise NotImplementedError

    def _pair_matrix(self, labels, embeddings, positive_mask) -> tuple[tf.Tensor, dict]:
        """`_pairwise(embeddings, embeddings)`, negatives synthesised if `symmetrical`.

        Returns:
            (matrix (B, B), stats); with synthesis the stats hold
            "synthetic_fraction": the fraction of negative entries whose hardest
            combination is strictly harder than every original-original one.
        """
        matrix = self._pairwise(embeddings, None)  # None: exact zero diagonal
        if not self.symmetrical:
            return matrix, {}
        negative, synthetic = self._symmetrical_negatives(labels, embeddings)
        same = tf.equal(labels[:, None], labels[None, :])
        matrix = tf.where(same, matrix, negative)
        neg = tf.logical_not(same)
        frac = safe_divide(
            tf.reduce_sum(tf.cast(synthetic & neg, tf.float32)),
            tf.reduce_sum(tf.cast(neg, tf.float32)),
        )
        return matrix, {"synthetic_fraction": frac}

    def _symmetrical_negatives(self, labels, embeddings):
        return hardest_negatives(
            embeddings,
            labels,
            lambda points: self._pairwise(points, None),
            rule=self.symm_rule,
            higher_is_harder=self._higher_is_harder,
        )

    def _standardize(self, labels, embeddings):
        embeddings = tf.convert_to_tensor(embeddings)
        if embeddings.shape.rank != 2:
            raise ValueError(
                f"{type(self).__name__}: `y_pred` (embeddings) must have shape (B, D), "
                f"got {embeddings.shape}"
            )
        embeddings = tf.cast(embeddings, tf.float32)
        labels = tf.convert_to_tensor(labels)
        if labels.shape.rank == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.shape.rank != 1:
            raise ValueError(
                f"{type(self).__name__}: `y_true` (labels) must have shape (B,) or (B, 1), "
                f"got {labels.shape}"
            )
        if labels.dtype.is_floating:
            # keras.losses.Loss.__call__ casts y_true to the loss dtype.
            labels = tf.round(labels)
        labels = tf.cast(labels, tf.int32)
        if (
            labels.shape[0] is not None
            and embeddings.shape[0] is not None
            and labels.shape[0] != embeddings.shape[0]
        ):
            raise ValueError(
                f"{type(self).__name__}: `y_true` has {labels.shape[0]} labels but "
                f"`y_pred` has {embeddings.shape[0]} embeddings"
            )
        return labels, embeddings
