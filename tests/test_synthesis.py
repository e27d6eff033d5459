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


def tie_band(x) -> float:
    """How far apart two float32 values of the tests below may land on any CPU
    for one exact value: well above the rounding of a few float32 products and
    sums of these points (about 0.3 ulp of their largest squared norm here),
    well below the gap between two different candidates (over 1e-3 here)."""
    scale = max(1.0, float(np.max(np.sum(np.square(x.astype(np.float64)), axis=1))))
    return 64 * float(np.finfo(np.float32).eps) * scale


def synthetic_flag_errors(synthetic, labels, x, f, rule, harder, eps):
    """Checks `hardest_negatives`'s "synthetic" flags against the float64 reference.

    Between two samples of different classes the flag must be set when the
    hardest combination the rule adds to its original-original ones beats
    them by more than `eps`, and clear when it falls short by more than
    `eps`. Within `eps` the two are a tie that float32 kernels may round
    either way (AVX2 and AVX-512 do), so either answer is allowed. An
    unpaired sample's "synthetic" points are the sample itself: a combination
    that only repeats an original one is no candidate, and when the rule adds
    nothing else (two unpaired samples) the flag must be clear on any CPU.

    Returns:
        (errors: list of (i, j, gap, flag), decided: how many flags were checked).
    """
    sets = np_pair_sets(labels, x.astype(np.float64))
    partner, first, paired = np_pairing(labels)
    combos = [(a, b) for a in range(4) for b in range(4)] if rule == "paper" else CODE_PAIRS
    sign = 1.0 if harder is max else -1.0  # hardness: higher is harder

    def point(i, slot):  # which point slot `slot` of sample i's pair set is
        if not paired[i]:
            return (i, False)
        a, p = (i, partner[i]) if first[i] else (partner[i], i)
        return ((a, p)[slot % 2], slot >= 2)

    errors, decided = [], 0
    for i in range(len(labels)):
        for j in np.flatnonzero(labels != labels[i]):
            hardness = {(point(i, a), point(j, b)): sign * f(sets[i][a], sets[j][b]) for a, b in combos}
            originals = {(point(i, a), point(j, b)) for a, b in combos if a < 2 and b < 2}
            orig = max(hardness[key] for key in originals)
            added = [v for key, v in hardness.items() if key not in originals]
            flag = bool(synthetic[i, j])
            if not added:
                expected = False
            elif abs(max(added) - orig) <= eps:
                continue  # a tie: either answer
            else:
                expected = max(added) > orig
            decided += 1
            if flag != expected:
                errors.append((i, int(j), max(added, default=orig) - orig, flag))
    return errors, decided


def symmetric_case(seed, kind):
    labels, x = random_batch(seed, classes=3, per_class=4, dim=5, normalize=kind == "euclidean")
    labels[-1] = 9  # one unpaired sample (odd class count) and a singleton
    if kind == "dot":
        return labels, x, (pairwise_dot, lambda u, v: u @ v, max, True)
    return labels, x, (pairwise_euclidean, lambda u, v: np.linalg.norm(u - v), min, False)


def hardest_negatives_errors(value, synthetic, labels, x, f, rule, harder) -> list[str]:
    """What is wrong in `hardest_negatives`'s (value, synthetic) for these
    inputs, against the float64 brute force; [] when nothing is."""
    problems = []
    ref = np_symm_matrix(labels, x.astype(np.float64), f, rule, harder)
    off = ~np.isclose(value, ref, rtol=1e-4, atol=1e-4)
    if off.any():
        problems.append(f"value differs from the brute force at {np.argwhere(off).tolist()}")
    errors, decided = synthetic_flag_errors(synthetic, labels, x, f, rule, harder, tie_band(x))
    if errors:
        problems.append(f"synthetic flag wrong at (i, j, gap, flag) {errors}")
    if decided < 0.9 * np.sum(labels[:, None] != labels[None, :]):
        problems.append(f"only {decided} flags decided: the tie band swallows the rest")
    return problems


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rule", ["paper", "code"])
@pytest.mark.parametrize("kind", ["dot", "euclidean"])
def test_hardest_combination_equals_brute_force(seed, rule, kind):
    labels, x, (fn, f, harder, high) = symmetric_case(seed, kind)
    value, synthetic = hardest_negatives(
        tf.constant(x), tf.constant(labels), fn, rule=rule, higher_is_harder=high
    )
    # The four points of each sample's pair, against the NumPy reference.
    np.testing.assert_allclose(
        np.transpose(pair_slots(tf.constant(x), tf.constant(labels)).numpy(), (1, 0, 2)),
        np_pair_sets(labels, x.astype(np.float64)), rtol=1e-4, atol=1e-5,
    )
    # The hardest value, and between classes the entries no original-original
    # combination reaches (within a pair, reflections tie with originals).
    assert hardest_negatives_errors(value.numpy(), synthetic.numpy(), labels, x, f, rule, harder) == []
    # The paper's rule covers every original-original combination, so its
    # value is at least as hard as the original one (the code's 6 set pairs
    # skip anchor-anchor and positive-positive).
    orig = fn(x, x).numpy()
    if rule == "paper":
        assert np.all(value.numpy() >= orig - 1e-4) if high else np.all(value.numpy() <= orig + 1e-4)


@pytest.mark.parametrize("rule", ["paper", "code"])
@pytest.mark.parametrize("kind", ["dot", "euclidean"])
def test_brute_force_check_catches_a_wrong_synthesis(rule, kind):
    """The tolerances above still catch what a wrong synthesis gives."""
    labels, x, (fn, f, harder, high) = symmetric_case(0, kind)
    value, synthetic = (t.numpy() for t in hardest_negatives(
        tf.constant(x), tf.constant(labels), fn, rule=rule, higher_is_harder=high))
    assert hardest_negatives_errors(value, synthetic, labels, x, f, rule, harder) == []
    # Reflections 10% short of the mirror image (alpha = 1.8, not 2).
    wrong = [t.numpy() for t in hardest_negatives(
        tf.constant(x), tf.constant(labels), fn, rule=rule, higher_is_harder=high, alpha=1.8)]
    assert hardest_negatives_errors(*wrong, labels, x, f, rule, harder)
    # Every flag flipped: each decided one is reported, none lost in the tie band.
    errors, decided = synthetic_flag_errors(~synthetic, labels, x, f, rule, harder, tie_band(x))
    assert len(errors) == decided > 0
    # Ties counted as synthetic (">=" for ">"): two unpaired samples of
    # different classes have nothing but their originals, and get flagged.
    unpaired = ~np_pairing(labels)[2]
    ties = np.outer(unpaired, unpaired) & (labels[:, None] != labels[None, :])
    assert ties.any()
    errors, _ = synthetic_flag_errors(synthetic | ties, labels, x, f, rule, harder, tie_band(x))
    assert {(i, j) for i, j, _, _ in errors} == {(int(i), int(j)) for i, j in np.argwhere(ties)}


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
