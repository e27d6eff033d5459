"""Symmetrical Synthesis (Gu & Ko, AAAI 2020): hard negatives by reflection.

The functions here are used by every loss through
`MetricLoss._synthetic_negatives` (the one place synthesis is applied); the
Keras layer `SymmetricalSynthesis` is also exported by `tfdnc.layers`.

For a same-class pair (p, x) the synthetic point of p is its reflection across
the line through x: q = 2 (p.x / ||x||^2) x - p, or in the general form of the
paper's ablation q = beta (alpha r - p) with r = (p.x / ||x||^2) x the
projection of p on x's axis (alpha = 2, beta = 1 is the mirror point). A
reflection keeps the norm of p and the pair's similarity and distance, so the
positive part of a loss is unchanged, while the synthetics of two classes can
lie closer to each other than any of the originals: harder negatives for free.

Pairing: within each class of the batch, samples are paired in batch order
(1st with 2nd, 3rd with 4th, ...); a class-balanced batch of P classes x M
images gives floor(M / 2) pairs per class. A sample left without a partner (odd
count) keeps itself as its "synthetic". Everything has static shapes and runs
under XLA.

Examples:
    >>> x = tf.random.normal((8, 16))
    >>> labels = tf.constant([0, 0, 1, 1, 2, 2, 3, 3])
    >>> q = SymmetricalSynthesis()(x, labels, training=True)   # (8, 16)
"""

from __future__ import annotations

import keras
import tensorflow as tf

SYMM_RULES = ("paper", "code")

# The authors' N-pair code: element-wise max over the 6 unordered pairs of the
# sets (anchor, positive, synthetic of anchor, synthetic of positive).
_CODE_SET_PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def pair_within_classes(labels) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Pairs the samples of each class in batch order.

    Args:
        labels: (B,) integer labels.

    Returns:
        (partner (B,) int32, first (B,) bool, paired (B,) bool): the index of
        each sample's partner (itself when unpaired), whether the sample is
        the first (lower index) member of its pair, and whether it has a partner.
    """
    labels = tf.reshape(labels, [-1])
    b = tf.shape(labels)[0]
    same = tf.cast(tf.equal(labels[:, None], labels[None, :]), tf.int32)
    earlier = tf.linalg.band_part(tf.ones([b, b], tf.int32), -1, 0) - tf.eye(b, dtype=tf.int32)
    rank = tf.reduce_sum(same * earlier, axis=1)  # position of i among its class
    count = tf.reduce_sum(same, axis=1)
    partner_rank = tf.bitwise.bitwise_xor(rank, 1)
    paired = partner_rank < count
    is_partner = tf.logical_and(same > 0, tf.equal(rank[None, :], partner_rank[:, None]))
    partner = tf.argmax(tf.cast(is_partner, tf.int32), axis=1, output_type=tf.int32)
    partner = tf.where(paired, partner, tf.range(b, dtype=tf.int32))
    first = tf.logical_and(paired, tf.equal(tf.bitwise.bitwise_and(rank, 1), 0))
    return partner, first, paired


def synthesize(embeddings, partner, alpha: float = 2.0, beta: float = 1.0, paired=None):
    """Synthetic point of every sample, reflected across its partner's axis.

    Args:
        embeddings: (B, D).
        partner: (B,) index of each sample's partner.
        alpha, beta: q = beta (alpha r - p), r the projection of p on the
            partner's axis.
        paired: optional (B,) bool; unpaired samples return themselves.

    Returns:
        (B, D) synthetic points; differentiable w.r.t. both members of a pair.
    """
    x = tf.convert_to_tensor(embeddings)
    axis = tf.gather(x, partner)
    scale = tf.reduce_sum(x * axis, axis=1, keepdims=True) / tf.maximum(
        tf.reduce_sum(tf.square(axis), axis=1, keepdims=True), 1e-12
    )
    q = beta * (alpha * scale * axis - x)
    if paired is not None:
        q = tf.where(tf.reshape(paired, [-1, 1]), q, x)
    return q


def pair_slot_indices(labels) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Where each sample's four pair points sit in `concat([embeddings, synthetics])`.

    The four points of a sample's pair are (anchor, positive, s_anchor,
    s_positive): "anchor" is the first member of the pair, "positive" the
    second, s_* their synthetics; both members of a pair get the same four.

    An unpaired sample's four slots all point at the sample itself, not at
    its copy among the synthetics: a copy's row of the (2B, 2B) matrix can
    round differently (AVX2 and AVX-512 kernels block a matmul differently),
    which would make the copy "harder" than its original on some CPUs.

    Returns:
        (indices (4, B) int32 into the 2B stacked points, partner (B,), paired (B,)).
    """
    partner, first, paired = pair_within_classes(labels)
    idx = tf.range(tf.shape(partner)[0], dtype=tf.int32)
    a_idx = tf.where(first | ~paired, idx, partner)
    p_idx = tf.where(first | ~paired, partner, idx)
    shift = tf.where(paired, tf.shape(idx)[0], 0)  # a pair's point's synthetic sits B rows down
    return tf.stack([a_idx, p_idx, a_idx + shift, p_idx + shift]), partner, paired


def pair_slots(embeddings, labels, alpha: float = 2.0, beta: float = 1.0) -> tf.Tensor:
    """The four points (anchor, positive, s_anchor, s_positive) of each sample's pair.

    Returns:
        (4, B, D) tensor.
    """
    x = tf.convert_to_tensor(embeddings)
    slots, partner, paired = pair_slot_indices(labels)
    points = tf.concat([x, synthesize(x, partner, alpha, beta, paired=paired)], axis=0)
    return tf.gather(points, slots)


def hardest_negatives(
    embeddings,
    labels,
    pairwise_fn,
    rule: str = "paper",
    higher_is_harder: bool = True,
    alpha: float = 2.0,
    beta: float = 1.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Hardest value between the pair sets of every two samples.

    Args:
        embeddings: (B, D).
        labels: (B,) integer labels (defines the pairs).
        pairwise_fn: (N, D) -> (N, N) similarity or distance matrix.
        rule: "paper": hardest of the 4 x 4 = 16 combinations of the two
            samples' pair points; "code": element-wise hardest over the 6 set
            pairs (X_i, Y_j) of the authors' N-pair code.
        higher_is_harder: True for similarities (take the max), False for
            distances (take the min).
        alpha, beta: the synthesis (see :func:`synthesize`).

    Returns:
        (matrix (B, B), synthetic (B, B) bool): the hardest value, and whether
        it is strictly harder than every original-original combination of the
        rule (i.e. a synthetic point made the difference).
    """
    if rule not in SYMM_RULES:
        raise ValueError(f"`symm_rule` must be one of {SYMM_RULES}, got {rule!r}")
    x = tf.convert_to_tensor(embeddings)
    slots, partner, paired = pair_slot_indices(labels)
    points = tf.concat([x, synthesize(x, partner, alpha, beta, paired=paired)], axis=0)
    # One (2B, 2B) matrix over originals and synthetics, then gathers: each
    # pair point is compared once, not once per member of its pair.
    full = pairwise_fn(points)
    if not higher_is_harder:
        full = -full
    if rule == "paper":
        # max over Y in set(j), then over X in set(i), of full[X, Y]
        per_col = _max_over(full, slots, axis=1)
        value = _max_over(per_col, slots, axis=0)
        originals = _max_over(_max_over(full, slots[:2], axis=1), slots[:2], axis=0)
    else:
        rows = [tf.gather(full, slots[k], axis=0) for k in range(4)]
        pairs = [tf.gather(rows[a], slots[b], axis=1) for a, b in _CODE_SET_PAIRS]
        value = tf.reduce_max(tf.stack(pairs), axis=0)
        originals = pairs[0]  # (anchor, positive): the only original-original set pair
    synthetic = tf.stop_gradient(value) > tf.stop_gradient(originals)
    return (value if higher_is_harder else -value), synthetic


def _max_over(matrix, indices, axis: int):
    """max over k of tf.gather(matrix, indices[k], axis=axis)."""
    out = tf.gather(matrix, indices[0], axis=axis)
    for k in range(1, indices.shape[0]):
        out = tf.maximum(out, tf.gather(matrix, indices[k], axis=axis))
    return out


@keras.saving.register_keras_serializable(package="tfdnc")
class SymmetricalSynthesis(keras.layers.Layer):
    """Synthetic hard negatives by symmetric reflection within same-class pairs.

    Pairs the samples of each class in the batch (in batch order) and returns,
    for every sample p with partner x, q = beta (alpha r - p) where r is the
    projection of p on x's axis. With the defaults (alpha=2, beta=1) q is p's
    mirror image across the line through x: same norm, same similarity and
    distance to x. Active only in training; at inference the input is returned
    unchanged. No weights.

    Args:
        alpha: scale of the projection (2 = mirror point).
        beta: scale of the result (1 keeps the norm).

    Examples:
        >>> layer = SymmetricalSynthesis()
        >>> x = tf.constant([[1.0, 0.0], [0.6, 0.8]])
        >>> np.asarray(layer(x, tf.constant([0, 0]), training=True), "float64").round(2).tolist()
        [[-0.28, 0.96], [0.6, -0.8]]
    """

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not alpha > 0:
            raise ValueError(f"SymmetricalSynthesis: `alpha` must be > 0, got {alpha}")
        if not beta > 0:
            raise ValueError(f"SymmetricalSynthesis: `beta` must be > 0, got {beta}")
        self.alpha = float(alpha)
        self.beta = float(beta)

    def call(self, embeddings, labels, training=None):
        if not training:
            return embeddings
        partner, _, paired = pair_within_classes(labels)
        return synthesize(embeddings, partner, self.alpha, self.beta, paired=paired)

    def compute_output_shape(self, input_shape, labels_shape=None):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta}
