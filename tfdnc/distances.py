"""Pairwise distances and similarities between embedding sets.

All functions take `x` of shape (N, D) and optionally `y` of shape (M, D)
(`y=None` means `y = x`) and return an (N, M) matrix. They are plain TensorFlow
graph code with static shapes, so they run inside `tf.function` and under XLA.

Examples:
    >>> x = tf.random.normal((8, 16))
    >>> d = pairwise_euclidean(x)          # (8, 8), zero diagonal
    >>> s = pairwise_cosine_similarity(x)  # (8, 8), ones on the diagonal
    >>> from tfdnc.losses import TripletLoss
    >>> loss = TripletLoss(distance=CosineDistance())  # a loss built with a distance object
"""

from __future__ import annotations

import keras
import tensorflow as tf

DISTANCES = ("euclidean", "squared_euclidean", "cosine")


def _as_float(x, name: str) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    if x.shape.rank is not None and x.shape.rank != 2:
        raise ValueError(f"`{name}` must be a rank-2 (N, D) tensor, got shape {x.shape}")
    return x


def _pair(x, y):
    x = _as_float(x, "x")
    if y is None:
        return x, x, True
    y = tf.cast(_as_float(y, "y"), x.dtype)
    if x.shape[-1] is not None and y.shape[-1] is not None and x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"`x` and `y` must have the same embedding size, got {x.shape} and {y.shape}"
        )
    return x, y, False


def pairwise_dot(x, y=None) -> tf.Tensor:
    """Inner products x_i . y_j."""
    x, y, _ = _pair(x, y)
    return tf.matmul(x, y, transpose_b=True)


def pairwise_squared_euclidean(x, y=None) -> tf.Tensor:
    """||x_i - y_j||^2, clamped at 0 (the expansion can go slightly negative).

    When `y` is None the diagonal is set to exactly 0.
    """
    x, y, same = _pair(x, y)
    xx = tf.reduce_sum(tf.square(x), axis=1, keepdims=True)
    yy = tf.reduce_sum(tf.square(y), axis=1, keepdims=True)
    sq = xx - 2.0 * tf.matmul(x, y, transpose_b=True) + tf.transpose(yy)
    sq = tf.maximum(sq, 0.0)
    if same:
        sq = sq * (1.0 - tf.eye(tf.shape(x)[0], dtype=sq.dtype))
    return sq


def safe_sqrt(sq: tf.Tensor, epsilon: float = 1e-16) -> tf.Tensor:
    """sqrt with a zero (not infinite) gradient where the argument is ~0.

    The derivative of sqrt is unbounded at 0, and duplicate embeddings (or the
    diagonal of a distance matrix) sit exactly there; the where-trick keeps
    both the value and the gradient finite.
    """
    tiny = sq <= epsilon
    root = tf.sqrt(tf.where(tiny, tf.ones_like(sq), sq))
    return tf.where(tiny, tf.zeros_like(sq), root)


def pairwise_euclidean(x, y=None) -> tf.Tensor:
    """||x_i - y_j||, with a finite gradient at coincident points."""
    return safe_sqrt(pairwise_squared_euclidean(x, y))


def pairwise_cosine_similarity(x, y=None, epsilon: float = 1e-12) -> tf.Tensor:
    """Cosine similarity x_i . y_j / (||x_i|| ||y_j||); zero vectors give 0."""
    x, y, same = _pair(x, y)
    xn = x * tf.math.rsqrt(tf.maximum(tf.reduce_sum(tf.square(x), 1, keepdims=True), epsilon))
    yn = xn if same else y * tf.math.rsqrt(
        tf.maximum(tf.reduce_sum(tf.square(y), 1, keepdims=True), epsilon)
    )
    return tf.matmul(xn, yn, transpose_b=True)


def pairwise_distance(x, y=None, metric: str = "euclidean") -> tf.Tensor:
    """Distance matrix by name: "euclidean", "squared_euclidean" or "cosine" (1 - cos)."""
    if metric == "euclidean":
        return pairwise_euclidean(x, y)
    if metric == "squared_euclidean":
        return pairwise_squared_euclidean(x, y)
    if metric == "cosine":
        return 1.0 - pairwise_cosine_similarity(x, y)
    raise ValueError(f"`metric` must be one of {DISTANCES}, got {metric!r}")


# --- distances as parts a loss is built with (pytorch-metric-learning's `distance=`) -------------


class Distance:
    """How a loss compares embeddings: a callable giving the (N, M) matrix of `x` (N, D) against `y` (M, D).

    A loss takes one at construction (`TripletLoss(distance=CosineDistance())`
    or by name, `distance="cosine"`), as pytorch-metric-learning's losses
    take a `distance=` object. `is_similarity` says which way is closer:
    True for similarities (higher = closer: the hardest negative is the
    largest value), False for distances. `y=None` compares `x` with itself
    (an exact zero diagonal for distances).

    Subclass it for your own: implement `pairwise(x, y)`, set `name` and
    `is_similarity`.

    Examples:
        >>> d = get_distance("euclidean")
        >>> d(tf.random.normal((4, 8))).shape
        TensorShape([4, 4])
    """

    name: str = ""
    is_similarity: bool = False

    def __call__(self, x, y=None) -> tf.Tensor:
        return self.pairwise(x, y)

    def pairwise(self, x, y=None) -> tf.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement pairwise(x, y)")

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> "Distance":
        return cls(**config)

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


_BY_NAME: dict[str, type[Distance]] = {}


def _named(cls: type[Distance]) -> type[Distance]:
    _BY_NAME[cls.name] = cls
    return keras.saving.register_keras_serializable(package="tfdnc")(cls)


@_named
class EuclideanDistance(Distance):
    """||x_i - y_j|| (finite gradient at coincident points)."""

    name = "euclidean"

    def pairwise(self, x, y=None):
        return pairwise_euclidean(x, y)


@_named
class SquaredEuclideanDistance(Distance):
    """||x_i - y_j||^2."""

    name = "squared_euclidean"

    def pairwise(self, x, y=None):
        return pairwise_squared_euclidean(x, y)


@_named
class CosineDistance(Distance):
    """1 - cos(x_i, y_j)."""

    name = "cosine"

    def pairwise(self, x, y=None):
        return 1.0 - pairwise_cosine_similarity(x, y)


@_named
class CosineSimilarity(Distance):
    """cos(x_i, y_j) (a similarity: higher is closer)."""

    name = "cosine_similarity"
    is_similarity = True

    def pairwise(self, x, y=None):
        return pairwise_cosine_similarity(x, y)


@_named
class DotProductSimilarity(Distance):
    """x_i . y_j, unnormalised (a similarity: higher is closer)."""

    name = "dot"
    is_similarity = True

    def pairwise(self, x, y=None):
        return pairwise_dot(x, y)


def get_distance(spec) -> Distance:
    """A `Distance` from a name (see `DISTANCE_NAMES`), a Keras-serialised dict, or a `Distance` (returned)."""
    if isinstance(spec, Distance):
        return spec
    if isinstance(spec, dict):
        distance = keras.saving.deserialize_keras_object(spec)
        if not isinstance(distance, Distance):
            raise ValueError(f"`distance`: {spec!r} is not a tfdnc.distances.Distance")
        return distance
    if isinstance(spec, str) and spec in _BY_NAME:
        return _BY_NAME[spec]()
    raise ValueError(f"`distance` must be a tfdnc.distances.Distance or one of {DISTANCE_NAMES}, got {spec!r}")


def serialize_distance(distance: Distance):
    """The distance as a loss's config stores it: its name for a shipped one, else Keras's dict."""
    if _BY_NAME.get(distance.name) is type(distance):
        return distance.name
    return keras.saving.serialize_keras_object(distance)


DISTANCE_NAMES = tuple(_BY_NAME)
