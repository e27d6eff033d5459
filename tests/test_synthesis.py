"""Geometry of Symmetrical Synthesis on random inputs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfdnc.losses.synthesis import (
    SymmetricalSynthesis,
    hardest_negatives,
    pair_slots,
    pair_within_classes,
    synthesize,
)
from tfdnc.distances import pairwise_dot, pairwise_euclidean


def np_pairing(labels):
    """Reference pairing: within each class, 1st with 2nd, 3rd with 4th, ..."""
    n = len(labels)
    partner, first = list(range(n)), [False] * n
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        for k in range(0, len(idx) - 1, 2):
            a, p = idx[k], idx[k + 1]
            partner[a], partner[p], first[a] = p, a, True
    paired = [partner[i] != i for i in range(n)]
    return np.array(partner), np.array(first), np.array(paired)


def np_reflect(p, axis, alpha=2.0, beta=1.0):
    r = (p @ axis) / (axis @ axis) * axis
    return beta * (alpha * r - p)


def np_pair_sets(labels, x, alpha=2.0, beta=1.0):
    """For each sample: [anchor, positive, synthetic anchor, synthetic positive]."""
    partner, first, paired = np_pairing(labels)
    sets = []
    for i in range(len(labels)):
        if not paired[i]:
            sets.append([x[i]] * 4)
            continue
        a, p = (i, partner[i]) if first[i] else (partner[i], i)
        sets.append([x[a], x[p], np_reflect(x[a], x[p], alpha, beta), np_reflect(x[p], x[a], alpha, beta)])
    return np.array(sets, dtype=np.float64)


CODE_PAIRS = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def np_symm_matrix(labels, x, f, rule="paper", harder=max):
    """Brute force: hardest f over the cross combinations of two samples' pair sets."""
    sets = np_pair_sets(labels, x)
    combos = [(a, b) for a in range(4) for b in range(4)] if rule == "paper" else CODE_PAIRS
    n = len(labels)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = harder(f(sets[i][a], sets[j][b]) for a, b in combos)
    return out


def random_batch(seed, classes=4, per_class=2, dim=6, shuffle=True, normalize=False):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    if shuffle:
        rng.shuffle(labels)
    x = rng.normal(size=(len(labels), dim))
    if normalize:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return labels.astype(np.int32), x.astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_pairing_matches_reference(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=11).astype(np.int32)  # odd counts, singletons
    partner, first, paired = (t.numpy() for t in pair_within_classes(tf.constant(labels)))
    ref_partner, ref_first, ref_paired = np_pairing(labels)
    np.testing.assert_array_equal(partner, ref_partner)
    np.testing.assert_array_equal(first, ref_first)
    np.testing.assert_array_equal(paired, ref_paired)


@pytest.mark.parametrize("seed", range(3))
def test_reflection_keeps_norms_similarity_and_distance(seed):
    labels, x = random_batch(seed, classes=3, per_class=4, dim=8)
    partner, _, paired = pair_within_classes(labels)
    q = synthesize(x, partner, paired=paired).numpy().astype(np.float64)
    xp = x[partner.numpy()].astype(np.float64)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), np.linalg.norm(x64, axis=1), rtol=1e-5)
    np.testing.assert_allclose((q * xp).sum(1), (x64 * xp).sum(1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        np.linalg.norm(q - xp, axis=1), np.linalg.norm(x64 - xp, axis=1), rtol=1e-4, atol=1e-5
    )
    # A reflection is not the identity for points off the axis.
    assert np.min(np.linalg.norm(q - x64, axis=1)) > 1e-3
    for i in range(len(labels)):
        np.testing.assert_allclose(q[i], np_reflect(x64[i], xp[i]), rtol=1e-4, atol=1e-5)


def test_reflecting_twice_returns_input():
    rng = np.random.default_rng(7)
    p, axis = rng.normal(size=(2, 5)).astype(np.float32)
    pts = tf.constant(np.stack([p, axis]))
    partner = tf.constant([1, 1])  # the axis point reflects onto itself
    once = synthesize(pts, partner)
    twice = synthesize(once, partner).numpy()
    np.testing.assert_allclose(once.numpy()[1], axis, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(twice[0], p, rtol=1e-4, atol=1e-5)


def test_general_form_and_unpaired_samples():
    labels = np.array([0, 1, 0, 2], np.int32)  # class 1 and 2: singletons
    x = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    layer = SymmetricalSynthesis(alpha=1.5, beta=0.5)
    q = layer(x, labels, training=True).numpy()
    np.testing.assert_allclose(q[0], np_reflect(x[0], x[2], 1.5, 0.5), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(q[2], np_reflect(x[2], x[0], 1.5, 0.5), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(q[[1, 3]], x[[1, 3]])
    # Inference: the layer is the identity.
    np.testing.assert_array_equal(layer(x, labels, training=False), x)
    np.testing.assert_array_equal(layer(x, labels), x)


def test_layer_config_and_validation():
    layer = SymmetricalSynthesis(alpha=2.5, beta=1.5, name="symm")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, SymmetricalSynthesis)
    assert (clone.alpha, clone.beta, clone.name) == (2.5, 1.5, "symm")
    assert not layer.weights
    with pytest.raises(ValueError, match="alpha"):
        SymmetricalSynthesis(alpha=0)
    with pytest.raises(ValueError, match="symm_rule"):
        hardest_negatives(tf.zeros((2, 3)), tf.constant([0, 0]), pairwise_dot, rule="mean")


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rule", ["paper", "code"])
@pytest.mark.parametrize("kind", ["dot", "euclidean"])
def test_hardest_combination_equals_brute_force(seed, rule, kind):
    labels, x = random_batch(seed, classes=3, per_class=4, dim=5, normalize=kind == "euclidean")
    labels[-1] = 9  # one unpaired sample (odd class count) and a singleton
    if kind == "dot":
        fn, f, harder, high = pairwise_dot, lambda u, v: u @ v, max, True
    else:
        fn, f, harder, high = pairwise_euclidean, lambda u, v: np.linalg.norm(u - v), min, False
    value, synthetic = hardest_negatives(
        tf.constant(x), tf.constant(labels), fn, rule=rule, higher_is_harder=high
    )
    # The four points of each sample's pair, against the NumPy reference.
    np.testing.assert_allclose(
        np.transpose(pair_slots(tf.constant(x), tf.constant(labels)).numpy(), (1, 0, 2)),
        np_pair_sets(labels, x.astype(np.float64)), rtol=1e-4, atol=1e-5,
    )
    ref = np_symm_matrix(labels, x.astype(np.float64), f, rule, harder)
    np.testing.assert_allclose(value.numpy(), ref, rtol=1e-4, atol=1e-4)
    # Between classes, "synthetic" flags the entries no original-original
    # combination reaches (within a pair, reflections tie with originals).
    sets = np_pair_sets(labels, x.astype(np.float64))
    combos = [(a, b) for a in range(4) for b in range(4)] if rule == "paper" else CODE_PAIRS
    for i in range(len(labels)):
        for j in np.flatnonzero(labels != labels[i]):
            orig = [f(sets[i][a], sets[j][b]) for a, b in combos if a < 2 and b < 2]
            best_orig = harder(orig)
            margin = abs(best_orig - ref[i, j])
            if margin > 1e-3:
                assert bool(synthetic[i, j])
            elif margin == 0 and np.ptp(orig) > 1e-3:
                assert not bool(synthetic[i, j])
    # The paper's rule covers every original-original combination, so its
    # value is at least as hard as the original one (the code's 6 set pairs
    # skip anchor-anchor and positive-positive).
    orig = fn(x, x).numpy()
    if rule == "paper":
        assert np.all(value.numpy() >= orig - 1e-4) if high else np.all(value.numpy() <= orig + 1e-4)


def test_gradients_flow_to_both_originals():
    rng = np.random.default_rng(3)
    x = tf.Variable(rng.normal(size=(2, 4)).astype(np.float64))
    c = rng.normal(size=(4,))
    partner = tf.constant([1, 0])
    with tf.GradientTape() as tape:
        q0 = synthesize(x, partner)[0]  # reflection of x0 across x1
        out = tf.reduce_sum(q0 * c)
    grad = tape.gradient(out, x).numpy()
    # Central finite differences of the NumPy reflection.
    eps, num = 1e-6, np.zeros((2, 4))
    x0 = x.numpy()
    for k in range(2):
        for d in range(4):
            hi, lo = x0.copy(), x0.copy()
            hi[k, d] += eps
            lo[k, d] -= eps
            num[k, d] = (np_reflect(hi[0], hi[1]) @ c - np_reflect(lo[0], lo[1]) @ c) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-7)
    assert np.all(np.abs(grad).sum(1) > 1e-3)  # both originals receive gradient


def test_runs_under_xla():
    labels, x = random_batch(0, classes=4, per_class=4, dim=8)
    eager = SymmetricalSynthesis()(x, labels, training=True)
    fn = tf.function(lambda e, l: SymmetricalSynthesis()(e, l, training=True), jit_compile=True)
    np.testing.assert_allclose(fn(tf.constant(x), tf.constant(labels)), eager, rtol=1e-5, atol=1e-6)
