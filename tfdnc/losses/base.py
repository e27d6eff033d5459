"""Base class of the metric-learning losses, and the layer that holds their variables."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

from tfdnc.losses.reducers import Reducer, get_reducer
from tfdnc.losses.synthesis import SYMM_RULES, hardest_negatives
from tfdnc.miners import label_masks, reference_masks


def safe_divide(numerator, denominator):
    """numerator / denominator, 0 where the denominator is 0."""
    denominator = tf.cast(denominator, numerator.dtype)
    return tf.math.divide_no_nan(numerator, denominator)


def log1p_sum_exp(z, mask, axis: int = 1):
    """log(1 + sum over `mask` of exp(z)) along `axis` (rows: 1, columns: 0), computed stably."""
    neg_inf = tf.fill(tf.shape(z), tf.constant(-float("inf"), z.dtype))
    z = tf.where(mask, z, neg_inf)
    one = tf.zeros_like(tf.gather(z, [0], axis=axis))  # the "1" as exp(0)
    return tf.reduce_logsumexp(tf.concat([one, z], axis=axis), axis=axis)


def learner_slot(learner, num_learners: int) -> tf.Tensor:
    """Index of a learner's state (proxies, memory): the learner id, or `num_learners` for None.

    A loss with a state per Divide & Conquer learner keeps `num_learners + 1`
    slots: one per learner and the last for the full embedding (`learner=None`).
    An id outside [0, num_learners) is clipped into it (a graph cannot raise);
    a Python int is checked up front.
    """
    if learner is None:
        return tf.constant(num_learners, tf.int32)
    if isinstance(learner, int) and not 0 <= learner < num_learners:
        raise ValueError(f"`learner` must be in [0, {num_learners}) or None, got {learner}")
    learner = tf.cast(tf.reshape(learner, []), tf.int32)
    return tf.clip_by_value(learner, 0, num_learners - 1)


@keras.saving.register_keras_serializable(package="tfdnc")
class LossParameters(keras.layers.Layer):
    """Holds a loss's variables (learnable or state) as Keras layer weights.

    A `keras.losses.Loss` is not tracked by a model, a layer is: the model keeps
    `loss.variables_layer` as an attribute, so the variables are saved,
    restored and checkpointed with the model's weights.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.built = True

    def call(self, inputs):
        return inputs


@dataclass(frozen=True)
class Reference:
    """Embeddings the batch's anchors are compared with instead of the batch itself.

    Built by :class:`tfdnc.losses.CrossBatchMemory` from its memory.

    Attributes:
        labels: (N,) int32.
        embeddings: (N, D) float32 (no gradient flows into them).
        valid: (N,) bool, False for empty slots.
        self_index: (B,) int32, the slot holding anchor i's own copy (-1: none).
    """

    labels: tf.Tensor
    embeddings: tf.Tensor
    valid: tf.Tensor
    self_index: tf.Tensor


class MetricLoss(keras.losses.Loss):
    """A loss on a batch of embeddings and their integer class labels.

    Subclasses implement :meth:`_compute` on a (B,) int32 label vector and a
    (B, D) float32 embedding matrix, returning a scalar loss and a dict of
    scalar statistics that includes `"active_fraction"`: the fraction of the
    pairs / triplets the loss considers whose loss term is non-zero. The
    per-element terms become the scalar through the loss's reducer (see
    :mod:`tfdnc.losses.reducers`); the default reducer of each loss gives its
    paper's formula.

    The model feeds L2-normalised embeddings to losses with
    `expects_normalized = True` and the raw embedding otherwise. Every loss
    accepts `learner=` (the Divide & Conquer learner, i.e. cluster id, of the
    batch, None for the full embedding); losses with a state per learner
    (proxies, a memory) use it, the others ignore it. `on_clusters_changed()`
    is called by the model when the clusters are recomputed.

    Symmetrical Synthesis (`symmetrical=True`): every negative distance or
    similarity between two samples is replaced by the hardest value between
    the four points of their pairs (originals and synthetics, see
    :mod:`tfdnc.losses.synthesis`); positives stay the originals.
    `symm_rule="paper"` takes the hardest of the 16 cross combinations,
    `"code"` the element-wise hardest over the authors' code's 6 set pairs.
    Subclasses declare how they compare points: `_pairwise(x, y)` (`y=None`
    compares `x` with itself) and
    `_higher_is_harder` (True for similarities, False for distances).
    `needs_positives` / `needs_negatives` say what a batch must hold for the
    loss to be useful (both, unless proxies stand in for them).

    Args:
        symmetrical: apply Symmetrical Synthesis to the negatives.
        symm_rule: "paper" or "code".
        reducer: None (the loss's own formula), "mean", "avg_non_zero", "sum"
            or a :class:`tfdnc.losses.reducers.Reducer`.
        name, dtype: as in `keras.losses.Loss`.
        reduction: not supported (Keras's per-sample reduction does not apply
            to a loss over pairs); must be None, use `reducer`.
    """

    expects_normalized: bool = True
    supports_symmetrical: bool = True
    # Pair-based losses that can compare the batch with a reference set (XBM).
    supports_reference: bool = False
    accepts_learner: bool = True
    # What every batch must hold for the loss to teach anything: a second image
    # of a class (a positive) and an image of another class (a negative). A
    # batch shape that cannot give them is refused before any data is read
    # (TrainConfig.validate: --images-per-class / --classes-per-batch >= 2).
    needs_positives: bool = True
    needs_negatives: bool = True
    default_reducer: str = "mean"
    _higher_is_harder: bool = False

    def __init__(
        self,
        symmetrical: bool = False,
        symm_rule: str = "paper",
        reducer: str | Reducer | None = None,
        name: str | None = None,
        reduction=None,
        dtype=None,
    ):
        if reduction is not None:
            raise ValueError(
                f"{type(self).__name__}: `reduction` is not supported by tfdnc losses (a metric loss "
                "reduces pairs / triplets, not per-sample losses); use `reducer=` "
                "('mean', 'avg_non_zero', 'sum' or a tfdnc.losses.reducers.Reducer)"
            )
        super().__init__(name=name, reduction="none", dtype=dtype)
        if symm_rule not in SYMM_RULES:
            raise ValueError(
                f"{type(self).__name__}: `symm_rule` must be one of {SYMM_RULES}, got {symm_rule!r}"
            )
        if symmetrical and not self.supports_symmetrical:
            raise ValueError(f"{type(self).__name__} does not support `symmetrical=True`")
        self.symmetrical = bool(symmetrical)
        self.symm_rule = symm_rule
        self._reducer_arg = reducer
        self.reducer = get_reducer(self.default_reducer if reducer is None else reducer)

    # -- public API --------------------------------------------------------

    @property
    def trainable_variables(self) -> list:
        """Learnable parameters of the loss (empty for most losses)."""
        layer = self.variables_layer
        return list(layer.trainable_weights) if layer is not None else []

    @property
    def variables_layer(self) -> LossParameters | None:
        """The layer that owns the loss's variables (None without any)."""
        return getattr(self, "_variables_layer", None)

    def __call__(self, y_true, y_pred, sample_weight=None):
        """The scalar loss; `sample_weight` (B,) weighs each anchor's terms (see the reducer)."""
        loss, _ = self.compute_loss_and_stats(y_true, y_pred, sample_weight=sample_weight)
        return loss

    def call(self, y_true, y_pred):
        loss, _ = self.compute_loss_and_stats(y_true, y_pred)
        return loss

    def compute_loss_and_stats(
        self, labels, embeddings, learner=None, sample_weight=None, training: bool = True
    ) -> tuple[tf.Tensor, dict]:
        """Loss (float32 scalar) and statistics for one batch.

        Args:
            labels: (B,) or (B, 1) integer (or integer-valued float) labels.
            embeddings: (B, D) embeddings.
            learner: scalar int, the D&C learner (cluster) of the batch; None
                in the full-embedding phase. Ignored by stateless losses.
            sample_weight: optional (B,) weights of the anchors.
            training: False leaves any state (a memory) untouched.
        """
        labels, embeddings = self._standardize(labels, embeddings)
        if sample_weight is not None:
            sample_weight = tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
        return self._compute(labels, embeddings, sample_weight=sample_weight, learner=learner)

    def compute_against_reference(
        self, labels, embeddings, reference: Reference, sample_weight=None
    ) -> tuple[tf.Tensor, dict]:
        """Loss of the batch's anchors against `reference` instead of the batch (used by XBM).

        Only for losses with `supports_reference = True` (pair- and
        triplet-based losses); `labels` and `embeddings` as standardised by
        `compute_loss_and_stats`.
        """
        if not self.supports_reference:
            raise ValueError(f"{type(self).__name__} cannot compare a batch with a reference set")
        return self._compute(labels, embeddings, sample_weight=sample_weight, reference=reference)

    def on_clusters_changed(self) -> None:
        """Called when the D&C clusters are recomputed; losses with a per-learner state reset it."""

    def get_config(self) -> dict:
        config = {
            **super().get_config(),
            "symmetrical": self.symmetrical,
            "symm_rule": self.symm_rule,
            "reducer": None if self._reducer_arg is None
            else keras.saving.serialize_keras_object(self.reducer),
        }
        config.pop("reduction", None)
        return config

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        # Saved before `reduction` was removed: it never had an effect.
        config.pop("reduction", None)
        return cls(**config)

    # -- for subclasses ------------------------------------------------------

    def _compute(self, labels, embeddings, sample_weight=None, reference=None, learner=None):
        """Returns (loss, stats). `reference`: compare with it instead of the batch (XBM)."""
        raise NotImplementedError

    def _pairwise(self, x, y):
        raise NotImplementedError

    def _pairs(self, labels, embeddings, reference: Reference | None = None):
        """(matrix (B, N), positive (B, N), negative (B, N), stats) of the anchors vs the candidates.

        The candidates are the batch itself (N = B; negatives synthesised if
        `symmetrical`) or `reference`.
        """
        if reference is None:
            positive, negative = label_masks(labels)
            matrix, stats = self._pair_matrix(labels, embeddings)
            return matrix, positive, negative, stats
        positive, negative = reference_masks(labels, reference.labels, reference.valid, reference.self_index)
        return self._pairwise(embeddings, reference.embeddings), positive, negative, {}

    def _pair_matrix(self, labels, embeddings, positive_mask=None) -> tuple[tf.Tensor, dict]:
        """`_pairwise(embeddings, embeddings)`, negatives synthesised if `symmetrical`."""
        matrix = self._pairwise(embeddings, None)  # None: exact zero diagonal
        if not self.symmetrical:
            return matrix, {}
        different = tf.not_equal(labels[:, None], labels[None, :])
        return self._synthetic_negatives(labels, embeddings, matrix, counted=different)

    def _synthetic_negatives(self, labels, embeddings, matrix, counted) -> tuple[tf.Tensor, dict]:
        """Symmetrical Synthesis, the one place it is applied to a loss's matrix.

        Entries of `matrix` between samples of different classes become the
        hardest value between the two samples' pair points.

        Returns:
            (matrix, {"synthetic_fraction": the fraction of the `counted`
            entries whose hardest combination is strictly harder than every
            original-original one}).
        """
        negative, synthetic = hardest_negatives(
            embeddings,
            labels,
            lambda points: self._pairwise(points, None),
            rule=self.symm_rule,
            higher_is_harder=self._higher_is_harder,
        )
        same = tf.equal(labels[:, None], labels[None, :])
        counted = tf.cast(counted, tf.bool)
        fraction = safe_divide(
            tf.reduce_sum(tf.cast(synthetic & counted, tf.float32)),
            tf.reduce_sum(tf.cast(counted, tf.float32)),
        )
        return tf.where(same, matrix, negative), {"synthetic_fraction": fraction}

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
