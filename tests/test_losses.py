"""Metric losses against brute-force NumPy references (loops over all pairs / triplets)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfdnc.losses import (
    ContrastiveLoss,
    MarginLoss,
    MetricLoss,
    MultiSimilarityLoss,
    TripletLoss,
    get_loss,
)
from tfdnc.miners import label_masks

SHAPES = [(0, 4, 2, 8), (1, 3, 4, 16), (2, 5, 3, 6)]  # seed, classes, per class, dim


def batch(seed, classes, per_class, dim, normalize=True):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    rng.shuffle(labels)
    x = rng.normal(size=(len(labels), dim)).astype(np.float32)
    if normalize:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return labels.astype(np.int32), x


def np_dist(x, metric="euclidean"):
    x = x.astype(np.float64)
    sq = ((x[:, None] - x[None]) ** 2).sum(-1)
    if metric == "euclidean":
        return np.sqrt(sq)
    if metric == "squared_euclidean":
        return sq
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return 1 - xn @ xn.T


# --- margin -------------------------------------------------------------------


def np_margin(labels, x, neg_idx, alpha=0.2, beta=1.2, nu=0.0):
    d = np_dist(x)
    beta = np.broadcast_to(beta, (labels.max() + 1,))
    total, count, active, triplets = 0.0, 0, 0, 0
    for a in range(len(labels)):
        if not np.any(labels != labels[a]):
            continue
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            n = neg_idx[a, p]
            b = beta[labels[a]]
            lp = max(d[a, p] - b + alpha, 0.0)
            ln = max(b - d[a, n] + alpha, 0.0)
            total += lp + ln + nu * b
            count += int(lp > 0) + int(ln > 0)
            active += (lp > 0) or (ln > 0)
            triplets += 1
    return (total / count if count else 0.0), active / triplets


@pytest.mark.parametrize("seed,classes,per_class,dim", SHAPES)
@pytest.mark.parametrize("beta", [1.2, 0.9])
def test_margin_matches_reference_given_negatives(seed, classes, per_class, dim, beta):
    labels, x = batch(seed, classes, per_class, dim)
    rng = np.random.default_rng(seed + 10)
    neg_idx = np.array(
        [[rng.choice(np.flatnonzero(labels != labels[a])) for _ in labels] for a in range(len(labels))]
    )
    loss = MarginLoss(beta=beta)
    pos, _ = label_masks(labels)
    d = np_dist(x).astype(np.float32)
    value, stats = loss.loss_given_negatives(
        tf.constant(labels), tf.constant(d), tf.constant(neg_idx, tf.int32), pos,
        tf.ones(len(labels), tf.bool),
    )
    ref, ref_active = np_margin(labels, x, neg_idx, beta=beta)
    assert float(value) == pytest.approx(ref, rel=1e-5)
    assert float(stats["active_fraction"]) == pytest.approx(ref_active)


def test_margin_end_to_end_draws_negatives_only():
    labels, x = batch(0, 4, 3, 8)
    loss = MarginLoss(seed=1)
    value, stats = loss.compute_loss_and_stats(labels, x)
    # Every (anchor, positive) pair is a triplet: 4 classes x 3 x 2.
    assert float(stats["num_triplets"]) == 24
    # The loss lies between the reference with the easiest and hardest negatives.
    d = np_dist(x)
    neg = labels[:, None] != labels[None]
    hardest = np.where(neg, d, np.inf).argmin(1)
    easiest = np.where(neg, d, -np.inf).argmax(1)
    lo = np_margin(labels, x, np.repeat(easiest[:, None], 12, 1))[0]
    hi = np_margin(labels, x, np.repeat(hardest[:, None], 12, 1))[0]
    assert np.isfinite(float(value))
    # Different non-zero counts can reorder means slightly, hence the slack.
    assert lo * 0.8 <= float(value) <= hi * 1.2


def test_margin_learnable_beta_gradient_and_regulariser():
    labels, x = batch(3, 3, 4, 8)
    loss = MarginLoss(learnable_beta=True, num_classes=5, nu=0.1, seed=0)
    assert len(loss.trainable_variables) == 1
    assert tuple(loss.trainable_variables[0].shape) == (5,)
    with tf.GradientTape() as tape:
        value = loss(labels, x)
    grad = tape.gradient(value, loss.trainable_variables)[0].numpy()
    assert np.all(np.isfinite(grad))
    # Only classes present in the batch get a gradient.
    assert np.all(grad[3:] == 0) and np.any(grad[:3] != 0)


def test_margin_needs_num_classes_when_learnable():
    with pytest.raises(ValueError, match="num_classes"):
        MarginLoss(learnable_beta=True)
    with pytest.raises(ValueError, match="cutoff"):
        MarginLoss(cutoff=1.5, nonzero_loss_cutoff=1.4)
