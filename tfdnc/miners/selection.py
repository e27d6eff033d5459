"""Tuple selection functions: which pairs / triplets a loss looks at.

The miner objects of :mod:`tfdnc.miners` call these. They work on a precomputed (B, B) distance or similarity matrix plus the
boolean positive / negative masks from :func:`label_masks`. They return masks
or per-anchor selections of static shape (no boolean gather), so losses built
on them compile with XLA.

Examples:
    >>> from tfdnc.distances import pairwise_euclidean
    >>> labels = tf.constant([0, 0, 1, 1])
    >>> pos, neg = label_masks(labels)
    >>> d = pairwise_euclidean(tf.random.normal((4, 8)))
    >>> hardest_pos, hardest_neg, valid = batch_hard(d, pos, neg)
"""

from __future__ import annotations

import keras
import tensorflow as tf


def label_masks(labels) -> tuple[tf.Tensor, tf.Tensor]:
    """(positive, negative) boolean (B, B) masks; the diagonal is in neither."""
    labels = tf.reshape(labels, [-1])
    same = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))
    return tf.logical_and(same, not_self), tf.logical_not(same)


def reference_masks(labels, ref_labels, ref_valid=None, self_index=None) -> tuple[tf.Tensor, tf.Tensor]:
    """(positive, negative) boolean (B, N) masks of a batch against a reference set.

    Used when the anchors of the batch are compared with other embeddings
    (the memory of :class:`tfdnc.losses.CrossBatchMemory`).

    Args:
        labels: (B,) labels of the anchors.
        ref_labels: (N,) labels of the reference embeddings.
        ref_valid: optional (N,) bool, False for empty reference slots (in neither mask).
        self_index: optional (B,) int, the column holding anchor i's own copy
            (in neither mask); -1 for none.
    """
    labels = tf.reshape(labels, [-1])
    ref_labels = tf.reshape(ref_labels, [-1])
    same = tf.equal(labels[:, None], ref_labels[None, :])
    usable = tf.ones_like(same)
    if ref_valid is not None:
        usable = usable & tf.reshape(tf.cast(ref_valid, tf.bool), [1, -1])
    if self_index is not None:
        columns = tf.range(tf.shape(ref_labels)[0], dtype=tf.int32)
        usable = usable & tf.not_equal(columns[None, :], tf.cast(self_index, tf.int32)[:, None])
    return same & usable, tf.logical_not(same) & usable


def masked_max(values, mask, axis: int = -1, keepdims: bool = False):
    """Max over entries where `mask` holds; rows with no entry give the row minimum."""
    mask = tf.cast(mask, tf.bool)
    lowest = tf.fill(tf.shape(values), tf.constant(values.dtype.min, values.dtype))
    best = tf.reduce_max(tf.where(mask, values, lowest), axis=axis, keepdims=keepdims)
    fallback = tf.reduce_min(values, axis=axis, keepdims=keepdims)
    return tf.where(tf.reduce_any(mask, axis=axis, keepdims=keepdims), best, fallback)


def masked_min(values, mask, axis: int = -1, keepdims: bool = False):
    """Min over entries where `mask` holds; rows with no entry give the row maximum."""
    return -masked_max(-values, mask, axis=axis, keepdims=keepdims)


def batch_hard(distances, positive_mask, negative_mask):
    """Per anchor: the farthest positive and the closest negative (Hermans et al. 2017).

    Returns:
        (hardest_positive (B,), hardest_negative (B,), valid (B,) bool), valid
        where the anchor has at least one positive and one negative.
    """
    hardest_pos = masked_max(distances, positive_mask)
    hardest_neg = masked_min(distances, negative_mask)
    valid = tf.logical_and(
        tf.reduce_any(positive_mask, axis=1), tf.reduce_any(negative_mask, axis=1)
    )
    return hardest_pos, hardest_neg, valid


def semi_hard_negatives(distances, negative_mask):
    """Negative distance for every anchor-positive pair, FaceNet semi-hard rule.

    For anchor a and positive p the negative is the closest n with
    d(a, n) > d(a, p); where no negative is farther than the positive, the
    farthest negative is used (as in TensorFlow's classic `triplet_semihard_loss`).

    Returns:
        (B, N) matrix (N = B, or the size of a reference set): entry (a, p) is
        d(a, n*) for the chosen negative.
    """
    d_an = distances[:, None, :]  # (a, ., n)
    d_ap = distances[:, :, None]  # (a, p, .)
    b, n = tf.shape(distances)[0], tf.shape(distances)[1]  # (B, N): N = B, or a reference set
    neg = tf.broadcast_to(negative_mask[:, None, :], [b, n, n])
    outside = tf.logical_and(neg, d_an > d_ap)
    d_an_b = tf.broadcast_to(d_an, [b, n, n])
    closest_outside = masked_min(d_an_b, outside)
    farthest = masked_max(d_an_b, neg)
    return tf.where(tf.reduce_any(outside, axis=-1), closest_outside, farthest)


def distance_weighted_log_weights(
    distances,
    negative_mask,
    dim: int,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
    epsilon: float = 1e-6,
):
    """Log sampling weights of distance-weighted sampling (Wu et al. 2017).

    On the unit sphere in `dim` dimensions, pairwise distances have density
    q(d) ∝ d^(n-2) (1 - d^2/4)^((n-3)/2). Sampling negatives with weight 1/q(d)
    spreads them evenly over distances instead of concentrating them near
    sqrt(2). Distances are clamped at `cutoff` (limits the variance of the
    weights) and negatives at or beyond `nonzero_loss_cutoff` get weight 0
    (they cannot give a non-zero margin-loss term).

    Returns:
        (B, B) logits: log 1/q(d) for eligible negatives, -inf elsewhere. A row
        with no eligible negative falls back to uniform logits (0) over all its
        negatives; a row with no negative at all is all -inf.
    """
    n = float(dim)
    d = tf.maximum(distances, cutoff)
    log_w = (2.0 - n) * tf.math.log(d) - ((n - 3.0) / 2.0) * tf.math.log(
        tf.maximum(1.0 - 0.25 * tf.square(d), epsilon)
    )
    eligible = tf.logical_and(negative_mask, distances < nonzero_loss_cutoff)
    neg_inf = tf.fill(tf.shape(log_w), tf.constant(-float("inf"), log_w.dtype))
    has_eligible = tf.reduce_any(eligible, axis=1, keepdims=True)
    # Uniform fallback over negatives, where the reference code would sample
    # uniformly over the whole batch (positives included).
    return tf.where(
        has_eligible,
        tf.where(eligible, log_w, neg_inf),
        tf.where(negative_mask, tf.zeros_like(log_w), neg_inf),
    )


def distance_weighted_sample(
    distances,
    negative_mask,
    dim: int,
    num_samples: int,
    seed=None,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
):
    """Draws `num_samples` negative indices per anchor by distance-weighted sampling.

    Args:
        distances: (B, B) Euclidean distances between L2-normalised embeddings.
        negative_mask: (B, B) bool, True where column j is a negative of row i.
        dim: embedding dimension n of the sphere the distances live on.
        num_samples: draws per anchor (with replacement).
        seed: a `keras.random.SeedGenerator`, an int or None.

    Returns:
        (indices (B, num_samples) int32, valid (B,) bool): valid is False for
        anchors without any negative (their indices are meaningless).
    """
    logits = distance_weighted_log_weights(
        distances, negative_mask, dim, cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff
    )
    valid = tf.reduce_any(negative_mask, axis=1)
    # Inverse-CDF sampling: normalised weights, their running sum, and for each
    # uniform draw the number of categories whose CDF lies below it. Costs
    # O(B * num_samples * B) comparisons, far cheaper than a multinomial op
    # (notably under XLA on CPU). Zero-weight columns are never drawn.
    finite = tf.math.is_finite(logits)
    row_max = tf.reduce_max(tf.where(finite, logits, -1e30), axis=1, keepdims=True)
    weights = tf.where(finite, tf.exp(logits - row_max), tf.zeros_like(logits))
    weights = tf.where(valid[:, None], weights, tf.ones_like(weights))
    cdf = tf.cumsum(weights, axis=1)
    total = cdf[:, -1:]
    b, n = tf.shape(distances)[0], tf.shape(distances)[1]
    u = keras.random.uniform(tf.stack([b, num_samples]), seed=seed, dtype=cdf.dtype) * total
    below = tf.cast(cdf[:, None, :] <= u[:, :, None], tf.int32)
    idx = tf.minimum(tf.reduce_sum(below, axis=-1), n - 1)
    return idx, valid


def closest_negatives_beyond_cutoff(distances, positive_mask, negative_mask, cutoff: float = 0.5):
    """Negative selection of the CVPR 2019 D&C margin loss: closest negatives at distance >= cutoff.

    For every anchor a with P_a positives, the P_a closest negatives n with
    d(a, n) >= `cutoff` are taken and paired with a's positives: the k-th
    positive of a (in column order) with the k-th of those negatives (in column
    order too), as the authors' `Sampler` does
    (CompVis/metric-learning-divide-and-conquer: lib/loss/sampler.py:55-78:
    distance + infinity on positives and on entries below the cutoff, `topk`
    of the K smallest, pairs `pos[i].nonzero()` with `neg[i].nonzero()`).
    Being deterministic it needs no seed.

    Departures from the reference, both only matter in batches that are not
    class-balanced or where the cutoff leaves an anchor short of negatives:

    - K is the anchor's own number of positives, so every anchor-positive pair
      gets exactly one negative. The reference uses one K for the whole batch,
      (number of positive pairs) // B (sampler.py:59), and where a row's count
      differs it keeps only min(K, P_a) triplets (sampler.py:80-91).
    - An anchor with fewer than P_a negatives beyond the cutoff is filled up
      with its negatives below the cutoff, those nearest the cutoff (the
      farthest of them) first; only when it has fewer than P_a negatives in
      all do its last positives go without a triplet (`valid` False). The
      reference's `topk` fills the row from the masked entries instead,
      smallest distance first: the anchor itself (its distance there is
      sqrt(1e-4) = 0.01, sampler.py:17) and then positives and too-close
      negatives alike (sampler.py:60-65), so it pairs positives with the anchor
      itself or with other positives used as negatives. The fill here keeps
      a gradient when the whole batch is closer than the cutoff (a collapsed
      embedding early in training), where dropping the triplets would give none.

    Args:
        distances: (B, B) distances (the margin loss: Euclidean between
            L2-normalised embeddings).
        positive_mask, negative_mask: (B, B) bool, from :func:`label_masks`.
        cutoff: negatives closer than this are only used as a fill.

    Returns:
        (negative_index (B, B) int32, valid (B, B) bool, below_cutoff (B, B)
        bool): column p of row a is the negative paired with the pair (a, p);
        `valid` is True exactly on the positive pairs that got a negative;
        `below_cutoff` marks the valid pairs whose negative is a fill from
        below the cutoff. Off `valid` the index is meaningless (but in range).

    (Over 60 lines for this docstring alone, which keeps the departures from
    the reference beside the code that makes them; the code is 27 lines.)
    """
    d = tf.convert_to_tensor(distances)
    pos = tf.cast(positive_mask, tf.bool)
    neg = tf.cast(negative_mask, tf.bool)
    eligible = tf.logical_and(neg, d >= tf.cast(cutoff, d.dtype))
    # Rank the columns of each row: negatives beyond the cutoff by increasing
    # distance, then negatives below it by decreasing distance, then the rest.
    # Two stable sorts (secondary key, then tier) give that order exactly.
    tier = tf.where(eligible, 0, tf.where(neg, 1, 2))
    secondary = tf.where(eligible, d, tf.where(neg, -d, tf.zeros_like(d)))
    by_distance = tf.argsort(secondary, axis=1, stable=True)
    by_tier = tf.argsort(tf.gather(tier, by_distance, batch_dims=1), axis=1, stable=True)
    ranked = tf.gather(by_distance, by_tier, batch_dims=1)  # (B, B) column ids, best first
    rank = tf.argsort(ranked, axis=1, stable=True)  # inverse permutation: rank of each column
    num_pos = tf.reduce_sum(tf.cast(pos, tf.int32), axis=1, keepdims=True)
    num_neg = tf.reduce_sum(tf.cast(neg, tf.int32), axis=1, keepdims=True)
    num_eligible = tf.reduce_sum(tf.cast(eligible, tf.int32), axis=1, keepdims=True)
    chosen = rank < tf.minimum(num_pos, num_neg)  # the row's min(P_a, N_a) best negatives
    # The chosen negatives in column order, then the k-th positive of the row
    # (0-based, column order) takes the k-th of them.
    chosen_in_order = tf.argsort(tf.cast(tf.logical_not(chosen), tf.int32), axis=1, stable=True)
    slot = tf.cumsum(tf.cast(pos, tf.int32), axis=1, exclusive=True)
    negative_index = tf.gather(chosen_in_order, slot, batch_dims=1)
    valid = tf.logical_and(pos, slot < num_neg)
    below_cutoff = tf.logical_and(
        valid, tf.gather(rank, negative_index, batch_dims=1) >= num_eligible
    )
    return tf.cast(negative_index, tf.int32), valid, below_cutoff


def multi_similarity_pairs(similarities, positive_mask, negative_mask, epsilon: float = 0.1):
    """Pair mining of the Multi-Similarity loss (Wang et al. 2019).

    A negative k of anchor i is kept if S_ik + epsilon > min over positives S_ij;
    a positive j is kept if S_ij - epsilon < max over negatives S_ik.

    Returns:
        (kept_positive (B, B) bool, kept_negative (B, B) bool).
    """
    min_pos = masked_min(similarities, positive_mask, keepdims=True)
    max_neg = masked_max(similarities, negative_mask, keepdims=True)
    has_pos = tf.reduce_any(positive_mask, axis=1, keepdims=True)
    has_neg = tf.reduce_any(negative_mask, axis=1, keepdims=True)
    keep_neg = negative_mask & has_pos & (similarities + epsilon > min_pos)
    keep_pos = positive_mask & has_neg & (similarities - epsilon < max_neg)
    return keep_pos, keep_neg
