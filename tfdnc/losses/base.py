"""The loss contract (`MetricLoss.compute`, `LossNeeds`, `register_loss`) and the layer that holds loss variables."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

from tfdnc.distances import Distance, get_distance, serialize_distance
from tfdnc.losses.reducers import Reducer, get_reducer
from tfdnc.losses.synthesis import SYMM_RULES, hardest_negatives
from tfdnc.miners import Miner, label_masks, reference_masks


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


# Constructor arguments a run supplies to a loss that declares it needs them (`LossNeeds.facts`).
FACTS = ("num_classes", "embedding_dim", "num_learners")


@dataclass(frozen=True)
class LossNeeds:
    """What a loss needs from the model and the run: the one place a loss declares it.

    A loss class sets `NEEDS = LossNeeds(...)`; the model and the run read it
    through `loss.needs()` (instances) or `LossClass.NEEDS` (before one is built).

    Attributes:
        normalized: the model feeds L2-normalised embeddings (False: the raw
            embedding, e.g. N-pair's norms are part of its loss).
        positives: every batch must hold a second image of a class (the run
            refuses --images-per-class 1 before reading data).
        negatives: every batch must hold an image of another class
            (--classes-per-batch 1 is refused).
        reference: the loss can compare the batch with a reference set
            (`Batch.reference`): a cross-batch memory can wrap it.
        symmetrical: the loss supports Symmetrical Synthesis.
        facts: constructor arguments the run supplies (any of `FACTS`:
            "num_classes", "embedding_dim", "num_learners"), so that the
            training code needs no knowledge of the loss (see
            `tfdnc.losses.loss_from_config`).
    """

    normalized: bool = True
    positives: bool = True
    negatives: bool = True
    reference: bool = False
    symmetrical: bool = True
    facts: tuple[str, ...] = ()

    def __post_init__(self):
        unknown = sorted(set(self.facts) - set(FACTS))
        if unknown:
            raise ValueError(f"LossNeeds: `facts` {unknown} are not facts a run supplies ({', '.join(FACTS)})")


@dataclass(frozen=True)
class Batch:
    """One batch as a loss's `compute` receives it (already checked and cast).

    Attributes:
        labels: (B,) int32 class labels.
        embeddings: (B, D) float32 embeddings (L2-normalised when the loss's
            `needs().normalized`).
        sample_weight: (B,) float32 weights of the anchors, or None.
        learner: scalar int (tensor or Python int), the Divide & Conquer
            learner (cluster) of the batch; None for the full embedding.
            Losses with a state per learner (proxies, a memory) use it.
        reference: a `Reference` to compare the anchors with instead of the
            batch (only for losses with `needs().reference`), or None.
        miner: a miner given at the call, used instead of the loss's own; None.
        training: False: an evaluation batch; a loss with state (a memory)
            leaves it untouched.
    """

    labels: tf.Tensor
    embeddings: tf.Tensor
    sample_weight: tf.Tensor | None = None
    learner: object = None
    reference: Reference | None = None
    miner: Miner | None = None
    training: bool = True


# name -> loss class; filled by @register_loss (`tfdnc.losses.LOSSES`).
LOSSES: dict = {}


def register_loss(name: str, package: str = "tfdnc"):
    """Class decorator: the one registration of a loss.

    Makes the class a Keras serialisable (so `keras.saving.load_model`
    restores it) and puts it in `tfdnc.losses.LOSSES` under `name` (so
    `get_loss(name)`, `--loss name` and `TrainConfig(loss=name)` find it);
    `tfdnc.losses.__all__` lists every registered class.

    Examples:
        >>> @register_loss("my_loss", package="my_project")
        ... class MyLoss(MetricLoss):
        ...     def compute(self, batch):
        ...         ...
    """
    key = str(name).lower().replace("-", "_")

    def register(cls):
        if not (isinstance(cls, type) and issubclass(cls, MetricLoss)):
            raise TypeError(f"register_loss({name!r}): {cls!r} is not a tfdnc.losses.MetricLoss subclass")
        taken = LOSSES.get(key)
        if taken is not None and taken.__qualname__ != cls.__qualname__:
            raise ValueError(f"register_loss: the name {name!r} is taken by {taken.__module__}.{taken.__qualname__}")
        cls = keras.saving.register_keras_serializable(package=package)(cls)
        LOSSES[key] = cls
        return cls

    return register


class MetricLoss(keras.losses.Loss):
    """A loss on a batch of embeddings and their integer class labels: the contract a loss implements.

    To write a loss, subclass this and implement one method, :meth:`compute`
    (see its docstring: a :class:`Batch` in, `(loss, stats)` out); declare
    what it needs in `NEEDS` (a :class:`LossNeeds`); register it with
    `@register_loss("name")`. Everything else is here: argument checks,
    `loss(y_true, y_pred)` as a `keras.losses.Loss`, the distance, the
    reducer, Symmetrical Synthesis, `get_config` of the base arguments.

    Parts composed at construction, as in pytorch-metric-learning:

    - `distance`: a :class:`tfdnc.distances.Distance` (or its name) the loss
      compares points with, `self.distance(x, y)`; each loss has a default
      (`default_distance`) and accepts only the same kind (a distance or a
      similarity), since its formula reads the values one way.
    - `reducer`: turns the per-element terms into the scalar (see
      :mod:`tfdnc.losses.reducers`); the default of each loss gives its
      paper's formula.
    - a miner (losses that mine take `miner=`); a miner can also be given at
      the call, `compute_loss_and_stats(..., miner=m)`, and reaches
      `compute` as `batch.miner` (use `self.pick_miner(batch)`).

    Divide & Conquer: every loss receives the batch's learner (cluster id;
    None for the full embedding) as `batch.learner`; losses with a state per
    learner (proxies, a memory) use it, the others ignore it.
    `on_clusters_changed()` is called by the model when the clusters are
    recomputed.

    Symmetrical Synthesis (`symmetrical=True`): every negative distance or
    similarity between two samples is replaced by the hardest value between
    the four points of their pairs (originals and synthetics, see
    :mod:`tfdnc.losses.synthesis`); positives stay the originals.
    `symm_rule="paper"` takes the hardest of the 16 cross combinations,
    `"code"` the element-wise hardest over the authors' code's 6 set pairs.

    Args:
        symmetrical: apply Symmetrical Synthesis to the negatives.
        symm_rule: "paper" or "code".
        reducer: None (the loss's own formula), "mean", "avg_non_zero", "sum"
            or a :class:`tfdnc.losses.reducers.Reducer`.
        distance: None (the loss's default), a name in
            `tfdnc.distances.DISTANCE_NAMES` or a `tfdnc.distances.Distance`.
        name, dtype: as in `keras.losses.Loss`.
        reduction: not supported (Keras's per-sample reduction does not apply
            to a loss over pairs); must be None, use `reducer`.
    """

    NEEDS = LossNeeds()
    default_reducer: str = "mean"
    default_distance: str = "euclidean"

    def __init__(
        self,
        symmetrical: bool = False,
        symm_rule: str = "paper",
        reducer: str | Reducer | None = None,
        distance: Distance | str | dict | None = None,
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
        if symmetrical and not self.needs().symmetrical:
            raise ValueError(f"{type(self).__name__} does not support `symmetrical=True`")
        self.symmetrical = bool(symmetrical)
        self.symm_rule = symm_rule
        self._reducer_arg = reducer
        self.reducer = get_reducer(self.default_reducer if reducer is None else reducer)
        self.distance = self._checked_distance(distance)
        self.miner = None  # losses that mine set their default miner

    # -- the contract: what a loss implements ------------------------------------

    def compute(self, batch: Batch) -> tuple[tf.Tensor, dict]:
        """The loss of one batch: implement this in a new loss.

        Args:
            batch: a :class:`Batch`: `labels` (B,) int32, `embeddings` (B, D)
                float32 (unit norm when `needs().normalized`), optional
                `sample_weight` (B,), the D&C `learner` (None: the full
                embedding), a `reference` set (XBM; only when
                `needs().reference`), a `miner` given at the call and
                `training` (False: leave any state alone).

        Returns:
            `(loss, stats)`: `loss` a float32 scalar tensor (differentiable
            w.r.t. `batch.embeddings` and the loss's own variables); `stats`
            a dict of float32 scalar tensors that includes
            `"active_fraction"`, the fraction of the pairs / triplets / anchors
            the loss considers whose term is non-zero (the model logs it).
            Graph code: no Python branching on tensor values (it runs inside
            `tf.function` and under XLA).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement compute(batch)")

    def needs(self) -> LossNeeds:
        """What this loss needs from the model and the run (its class's `NEEDS`; see `LossNeeds`)."""
        return type(self).NEEDS

    @classmethod
    def facts_needed(cls, options: dict) -> tuple[str, ...]:
        """The facts (`FACTS`) the run must give a loss built with `options`; `NEEDS.facts` by default."""
        return cls.NEEDS.facts

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
        self, labels, embeddings, learner=None, sample_weight=None, training: bool = True, miner=None
    ) -> tuple[tf.Tensor, dict]:
        """Loss (float32 scalar) and statistics for one batch: checks the inputs, then `compute`.

        Args:
            labels: (B,) or (B, 1) integer (or integer-valued float) labels.
            embeddings: (B, D) embeddings.
            learner: scalar int, the D&C learner (cluster) of the batch; None
                in the full-embedding phase. Ignored by stateless losses.
            sample_weight: optional (B,) weights of the anchors.
            training: False leaves any state (a memory) untouched.
            miner: a miner to use for this call instead of the loss's own.
        """
        labels, embeddings = self._standardize(labels, embeddings)
        if sample_weight is not None:
            sample_weight = tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
        return self.compute(Batch(labels, embeddings, sample_weight=sample_weight, learner=learner, miner=miner,
                                  training=bool(training)))

    def compute_against_reference(
        self, labels, embeddings, reference: Reference, sample_weight=None, miner=None
    ) -> tuple[tf.Tensor, dict]:
        """Loss of the batch's anchors against `reference` instead of the batch (used by XBM).

        Only for losses with `needs().reference` (pair- and triplet-based
        losses); `labels` and `embeddings` as standardised by
        `compute_loss_and_stats`.
        """
        if not self.needs().reference:
            raise ValueError(f"{type(self).__name__} cannot compare a batch with a reference set")
        return self.compute(Batch(labels, embeddings, sample_weight=sample_weight, reference=reference, miner=miner))

    def on_clusters_changed(self) -> None:
        """Called when the D&C clusters are recomputed; losses with a per-learner state reset it."""

    def get_config(self) -> dict:
        config = {
            **super().get_config(),
            "symmetrical": self.symmetrical,
            "symm_rule": self.symm_rule,
            "reducer": None if self._reducer_arg is None
            else keras.saving.serialize_keras_object(self.reducer),
            "distance": serialize_distance(self.distance),
        }
        config.pop("reduction", None)
        return config

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        # Saved before `reduction` was removed: it never had an effect.
        config.pop("reduction", None)
        return cls(**config)

    # -- helpers for subclasses ------------------------------------------------

    def pick_miner(self, batch: Batch):
        """The miner of this call: the one given at the call (`batch.miner`), else the loss's own."""
        return self.miner if batch.miner is None else batch.miner

    def _checked_distance(self, distance) -> Distance:
        """`distance` as a `Distance`, of the kind (distance or similarity) the loss's formula reads."""
        default = get_distance(self.default_distance)
        chosen = default if distance is None else get_distance(distance)
        if chosen.is_similarity != default.is_similarity:
            kind = "similarity (higher = closer)" if default.is_similarity else "distance (lower = closer)"
            raise ValueError(f"{type(self).__name__}: `distance` must be a {kind} like {default!r}, got {chosen!r}")
        return chosen

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
        return self.distance(embeddings, reference.embeddings), positive, negative, {}

    def _pair_matrix(self, labels, embeddings, positive_mask=None) -> tuple[tf.Tensor, dict]:
        """`distance(embeddings, embeddings)`, negatives synthesised if `symmetrical`."""
        matrix = self.distance(embeddings, None)  # None: exact zero diagonal
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
            lambda points: self.distance(points, None),
            rule=self.symm_rule,
            higher_is_harder=self.distance.is_similarity,
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
