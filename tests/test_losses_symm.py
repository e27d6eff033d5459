"""N-pair, lifted structure and angular losses, and Symmetrical Synthesis in every
loss, against brute-force NumPy references."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.special import logsumexp

from test_losses import np_contrastive, np_dist, np_multi_similarity, np_triplet
from test_synthesis import np_pairing, np_symm_matrix, random_batch
from tfdnc.losses import AngularLoss, LiftedStructureLoss, NPairLoss, get_loss
from tfdnc.miners import label_masks

# seed, classes, per class, dim, shuffled
LAYOUTS = [(0, 4, 2, 8, False), (1, 3, 4, 6, True), (2, 4, 3, 5, True)]
RULES = [None, "paper", "code"]  # None: no synthesis


def make_batch(seed, classes, per_class, dim, shuffle, normalize=True, scale=1.0):
    labels, x = random_batch(seed, classes, per_class, dim, shuffle, normalize)
    return labels, (scale * x).astype(np.float32)


def euclid(u, v):
    return np.linalg.norm(u - v)


def with_synthesis(labels, matrix, x, f, rule, harder):
    """The loss's matrix: originals on same-class entries, hardest combination elsewhere."""
    if rule is None:
        return matrix
    symm = np_symm_matrix(labels, x.astype(np.float64), f, rule, harder)
    return np.where(labels[:, None] == labels[None], matrix, symm)


def options(rule):
    return {} if rule is None else {"symmetrical": True, "symm_rule": rule}


# --- references -------------------------------------------------------------------


def np_npair(labels, x, l2, neg=None):
    x = x.astype(np.float64)
    partner, first, _ = np_pairing(labels)
    anchors = np.flatnonzero(first)
    losses, violated, negatives = [], 0, 0
    for i in anchors:
        logits = np.array([
            x[i] @ x[partner[j]] if neg is None or labels[i] == labels[j] else neg[i, j]
            for j in anchors
        ])
        target = np.array([labels[j] == labels[i] for j in anchors], float)
        target /= target.sum()
        losses.append(-(target * (logits - logsumexp(logits))).sum())
        own = x[i] @ x[partner[i]]
        for k, j in enumerate(anchors):
            if labels[j] != labels[i]:
                negatives += 1
                violated += logits[k] >= own
    reg = 0.25 * l2 * (
        np.mean((x[anchors] ** 2).sum(1)) + np.mean((x[partner[anchors]] ** 2).sum(1))
    )
    return np.mean(losses) + reg, violated / negatives


def np_angular(labels, x, alpha, l2, neg=None):
    x = x.astype(np.float64)
    partner, first, _ = np_pairing(labels)
    anchors = np.flatnonzero(first)
    t2 = np.tan(np.radians(alpha)) ** 2
    losses, active, count = [], 0, 0
    for i in anchors:
        a, p = x[i], x[partner[i]]
        fs = [0.0]
        for j in anchors:
            if labels[j] == labels[i]:
                continue
            n = x[partner[j]]
            an, pn = (a @ n, p @ n) if neg is None else (neg[i, j], neg[i, j])
            f = 4 * t2 * (an + pn) - 2 * (1 + t2) * (a @ p)
            fs.append(f)
            active += f > 0
            count += 1
        losses.append(logsumexp(fs))
    reg = 0.25 * l2 * (
        np.mean((x[anchors] ** 2).sum(1)) + np.mean((x[partner[anchors]] ** 2).sum(1))
    )
    return np.mean(losses) + reg, active / count


def np_lifted(labels, x, margin, d=None):
    d = np_dist(x) if d is None else d
    n = len(labels)
    terms = []
    for i in range(n):
        for j in range(i + 1, n):
            if labels[i] != labels[j]:
                continue
            negs = [np.exp(margin - d[i, k]) for k in range(n) if labels[k] != labels[i]]
            negs += [np.exp(margin - d[j, k]) for k in range(n) if labels[k] != labels[j]]
            terms.append(np.log(np.sum(negs)) + d[i, j])
    terms = np.array(terms)
    return (np.maximum(terms, 0) ** 2).sum() / (2 * len(terms)), (terms > 0).mean()


# --- new losses, with and without synthesis -----------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rule", RULES)
def test_npair_matches_reference(layout, rule):
    labels, x = make_batch(*layout, normalize=False, scale=0.7)
    loss = NPairLoss(l2_regularization=0.01, **options(rule))
    assert not loss.needs().normalized
    value, stats = loss.compute_loss_and_stats(labels, x)
    neg = None if rule is None else np_symm_matrix(labels, x.astype(np.float64), np.dot, rule, max)
    ref, ref_active = np_npair(labels, x, 0.01, neg)
    assert float(value) == pytest.approx(ref, rel=1e-4)
    assert float(stats["active_fraction"]) == pytest.approx(ref_active)
    if rule is not None:
        assert 0.0 < float(stats["synthetic_fraction"]) <= 1.0


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("alpha", [36.0, 45.0])
def test_angular_matches_reference(layout, rule, alpha):
    labels, x = make_batch(*layout, normalize=False, scale=0.5)
    loss = AngularLoss(alpha=alpha, l2_regularization=0.002, **options(rule))
    assert not loss.needs().normalized
    value, stats = loss.compute_loss_and_stats(labels, x)
    neg = None if rule is None else np_symm_matrix(labels, x.astype(np.float64), np.dot, rule, max)
    ref, ref_active = np_angular(labels, x, alpha, 0.002, neg)
    assert float(value) == pytest.approx(ref, rel=1e-4)
    assert float(stats["active_fraction"]) == pytest.approx(ref_active)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("margin", [1.0, 0.3])
def test_lifted_matches_reference(layout, rule, margin):
    labels, x = make_batch(*layout)
    value, stats = LiftedStructureLoss(margin, **options(rule)).compute_loss_and_stats(labels, x)
    d = with_synthesis(labels, np_dist(x), x, euclid, rule, min)
    ref, ref_active = np_lifted(labels, x, margin, d)
    assert float(value) == pytest.approx(ref, rel=1e-4)
    assert float(stats["active_fraction"]) == pytest.approx(ref_active)


# --- synthesis in the other losses ----------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rule", ["paper", "code"])
@pytest.mark.parametrize("mining", ["batch_all", "batch_hard", "semi_hard"])
def test_triplet_with_synthesis(layout, rule, mining):
    labels, x = make_batch(*layout)
    loss = get_loss("triplet", margin=0.3, mining=mining, **options(rule))
    value, stats = loss.compute_loss_and_stats(labels, x)
    d = with_synthesis(labels, np_dist(x), x, euclid, rule, min)
    ref, ref_active = np_triplet(labels, x, 0.3, mining, "euclidean", d=d)
    assert float(value) == pytest.approx(ref, rel=1e-4, abs=1e-6)
    assert float(stats["active_fraction"]) == pytest.approx(ref_active, abs=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rule", ["paper", "code"])
def test_contrastive_and_multi_similarity_with_synthesis(layout, rule):
    labels, x = make_batch(*layout)
    value = get_loss("contrastive", neg_margin=1.2, **options(rule))(labels, x)
    d = with_synthesis(labels, np_dist(x), x, euclid, rule, min)
    assert float(value) == pytest.approx(np_contrastive(labels, x, 0.0, 1.2, d=d)[0], rel=1e-4)
    value = get_loss("multi_similarity", **options(rule))(labels, x)
    s = with_synthesis(labels, x.astype(np.float64) @ x.T, x, np.dot, rule, max)
    ref = np_multi_similarity(labels, x, 2.0, 50.0, 0.5, 0.1, s=s)[0]
    assert float(value) == pytest.approx(ref, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("rule", ["paper", "code"])
def test_margin_uses_synthesised_distances(rule):
    labels, x = make_batch(1, 3, 4, 6, True)
    loss = get_loss("margin", seed=0, **options(rule))
    pos, _ = label_masks(labels)
    d, stats = loss._pair_matrix(tf.constant(labels), tf.constant(x), pos)
    ref = with_synthesis(labels, np_dist(x), x, euclid, rule, min)
    np.testing.assert_allclose(d.numpy(), ref, rtol=1e-4, atol=1e-4)
    value, stats = loss.compute_loss_and_stats(labels, x)
    assert np.isfinite(float(value)) and "synthetic_fraction" in stats


@pytest.mark.parametrize("rule", ["paper", "code"])
def test_margin_closest_beyond_cutoff_selects_on_synthesised_distances(rule):
    from test_losses import np_closest_negatives, np_margin

    labels, x = make_batch(2, 4, 3, 6, True, normalize=True)
    loss = get_loss("margin", negative_sampling="closest_beyond_cutoff", **options(rule))
    value, stats = loss.compute_loss_and_stats(labels, x)
    d = with_synthesis(labels, np_dist(x), x, euclid, rule, min)
    neg_idx, valid = np_closest_negatives(labels, d.astype(np.float32))
    ref, ref_active = np_margin(labels, x, neg_idx, d=d, valid=valid)
    assert float(value) == pytest.approx(ref, rel=1e-4, abs=1e-6)
    assert float(stats["active_fraction"]) == pytest.approx(ref_active)
    assert "synthetic_fraction" in stats and "below_cutoff_fraction" in stats


def test_synthesis_makes_negatives_harder_and_keeps_positives():
    labels, x = make_batch(3, 6, 2, 16, False)
    plain = get_loss("triplet", mining="batch_all", margin=0.5)
    symm = get_loss("triplet", mining="batch_all", margin=0.5, symmetrical=True)
    pos, _ = label_masks(labels)
    d0, _ = plain._pair_matrix(tf.constant(labels), tf.constant(x), pos)
    d1, _ = symm._pair_matrix(tf.constant(labels), tf.constant(x), pos)
    same = labels[:, None] == labels[None]
    np.testing.assert_array_equal(d0.numpy()[same], d1.numpy()[same])
    assert np.all(d1.numpy()[~same] <= d0.numpy()[~same] + 1e-6)
    assert np.any(d1.numpy()[~same] < d0.numpy()[~same] - 1e-3)
    assert float(symm(labels, x)) >= float(plain(labels, x)) - 1e-6


SYMM_LOSSES = [
    ("triplet", {"mining": "semi_hard"}),
    ("margin", {}),
    ("margin", {"negative_sampling": "closest_beyond_cutoff"}),
    ("npair", {}),
    ("lifted", {}),
    ("angular", {}),
    ("multi_similarity", {}),
    ("contrastive", {}),
]


@pytest.mark.parametrize("name,opts", SYMM_LOSSES)
def test_gradients_reach_both_pair_members(name, opts):
    labels, x = make_batch(0, 4, 2, 8, False, normalize=name not in ("npair", "angular"))
    x = tf.constant(x)
    loss = get_loss(name, symmetrical=True, symm_rule="code", **opts)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value, stats = loss.compute_loss_and_stats(tf.constant(labels), x)
    grad = tape.gradient(value, x).numpy()
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
    assert np.all(np.abs(grad).sum(1) > 0)  # every sample, originals of each pair included
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert restored.symmetrical and restored.symm_rule == "code"
    assert restored.get_config() == loss.get_config()


@pytest.mark.parametrize("name", ["triplet", "npair"])
def test_synthesis_compiles_with_xla(name):
    labels, x = make_batch(1, 4, 2, 8, False)
    loss = get_loss(name, symmetrical=True)
    fn = tf.function(loss.compute_loss_and_stats, jit_compile=True)
    value, stats = fn(tf.constant(labels), tf.constant(x))
    assert float(value) == pytest.approx(float(loss(labels, x)), rel=1e-5)
    assert 0.0 <= float(stats["synthetic_fraction"]) <= 1.0


def test_new_losses_validate_arguments():
    with pytest.raises(ValueError, match="alpha"):
        AngularLoss(alpha=95)
    with pytest.raises(ValueError, match="symm_rule"):
        NPairLoss(symmetrical=True, symm_rule="max")
    with pytest.raises(ValueError, match="margin"):
        LiftedStructureLoss(margin=-1)
