import keras
import numpy as np
import pytest
import tensorflow as tf

from tfdnc import miners
from tfdnc.distances import pairwise_euclidean


def _sphere(rng, n, d):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _masks(labels):
    same = labels[:, None] == labels[None, :]
    return same & ~np.eye(len(labels), dtype=bool), ~same


def test_label_masks():
    labels = np.array([0, 1, 0, 2, 1])
    pos, neg = miners.label_masks(tf.constant(labels))
    ref_pos, ref_neg = _masks(labels)
    np.testing.assert_array_equal(pos, ref_pos)
    np.testing.assert_array_equal(neg, ref_neg)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_hard_and_semi_hard_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=10)
    labels[-1] = 7  # a singleton: no positive
    d = rng.uniform(0, 2, size=(10, 10)).astype(np.float32)
    pos, neg = _masks(labels)
    hp, hn, valid = (
        t.numpy() for t in miners.batch_hard(tf.constant(d), tf.constant(pos), tf.constant(neg))
    )
    semi = miners.semi_hard_negatives(tf.constant(d), tf.constant(neg)).numpy()
    for a in range(10):
        assert bool(valid[a]) == (pos[a].any() and neg[a].any())
        if valid[a]:
            assert hp[a] == pytest.approx(d[a][pos[a]].max())
            assert hn[a] == pytest.approx(d[a][neg[a]].min())
        for p in np.flatnonzero(pos[a]):
            cands = [d[a, n] for n in np.flatnonzero(neg[a]) if d[a, n] > d[a, p]]
            ref = min(cands) if cands else d[a][neg[a]].max()
            assert semi[a, p] == pytest.approx(ref)


def _np_log_weights(d, neg, dim, cutoff, nz):
    dc = np.maximum(d, cutoff)
    lw = (2 - dim) * np.log(dc) - (dim - 3) / 2 * np.log(np.maximum(1 - dc**2 / 4, 1e-6))
    elig = neg & (d < nz)
    out = np.where(elig, lw, -np.inf)
    none = ~elig.any(1)
    out[none] = np.where(neg[none], 0.0, -np.inf)
    return out


@pytest.mark.parametrize("dim,nz", [(4, 1.4), (8, 1.2)])
def test_distance_weighted_sampling_distribution(dim, nz):
    rng = np.random.default_rng(dim)
    labels = np.repeat(np.arange(4), 3)
    x = _sphere(rng, 12, dim)
    d = pairwise_euclidean(x).numpy()
    pos, neg = _masks(labels)
    logits = _np_log_weights(d, neg, dim, 0.5, nz)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(
        np.exp(miners.distance_weighted_log_weights(d, neg, dim, 0.5, nz).numpy() - logits.max(1, keepdims=True)),
        np.exp(logits - logits.max(1, keepdims=True)),
        rtol=1e-3, atol=1e-6,
    )
    draws = 20000
    idx, valid = miners.distance_weighted_sample(
        tf.constant(d), tf.constant(neg), dim, draws, seed=keras.random.SeedGenerator(3),
        nonzero_loss_cutoff=nz,
    )
    assert np.all(valid)
    idx = idx.numpy()
    for a in range(12):
        freq = np.bincount(idx[a], minlength=12) / draws
        np.testing.assert_allclose(freq, probs[a], atol=0.015)
        # never a positive, the anchor itself or a negative beyond the cutoff
        forbidden = ~neg[a] | ((d[a] >= nz) & (neg[a] & (d[a] < nz)).any())
        assert freq[forbidden].sum() == 0


def test_sampling_falls_back_to_uniform_negatives():
    # Two tight clusters far apart: every negative is beyond the cutoff.
    x = np.array([[1, 0, 0, 0], [0.999, 0.04, 0, 0], [-1, 0, 0, 0], [-0.999, 0, 0.04, 0]], np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.array([0, 0, 1, 1])
    _, neg = _masks(labels)
    idx, valid = miners.distance_weighted_sample(
        pairwise_euclidean(x), tf.constant(neg), 4, 4000, seed=keras.random.SeedGenerator(0)
    )
    idx = idx.numpy()
    assert np.all(valid)
    for a in range(4):
        freq = np.bincount(idx[a], minlength=4) / 4000
        np.testing.assert_allclose(freq[neg[a]], 0.5, atol=0.05)
        assert freq[~neg[a]].sum() == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_multi_similarity_pairs_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=9)
    s = rng.uniform(-1, 1, size=(9, 9)).astype(np.float32)
    pos, neg = _masks(labels)
    kp, kn = miners.multi_similarity_pairs(tf.constant(s), tf.constant(pos), tf.constant(neg), 0.1)
    for i in range(9):
        if not pos[i].any() or not neg[i].any():
            assert not kp[i].numpy().any() and not kn[i].numpy().any()
            continue
        np.testing.assert_array_equal(kn[i], neg[i] & (s[i] + 0.1 > s[i][pos[i]].min()))
        np.testing.assert_array_equal(kp[i], pos[i] & (s[i] - 0.1 < s[i][neg[i]].max()))


# --- closest negatives beyond the cutoff (CVPR 2019 D&C sampler) -------------------


def np_closest_beyond_cutoff(d, pos, neg, cutoff):
    """Brute force: {(a, p): (n, from_below_cutoff)} for every positive pair that gets a negative.

    Per anchor: rank negatives at d >= cutoff by increasing distance, then
    those below it by decreasing distance (ties: lower column first); keep the
    first min(P_a, N_a); pair the k-th positive with the k-th kept negative,
    both in column order.
    """
    out = {}
    for a in range(len(d)):
        beyond = sorted((d[a, n], n) for n in np.flatnonzero(neg[a]) if d[a, n] >= cutoff)
        below = sorted((-d[a, n], n) for n in np.flatnonzero(neg[a]) if d[a, n] < cutoff)
        ranked = [n for _, n in beyond] + [n for _, n in below]
        positives = np.flatnonzero(pos[a])
        kept = sorted(ranked[: len(positives)])
        for p, n in zip(positives, kept):
            out[(a, p)] = (n, ranked.index(n) >= len(beyond))
    return out


def np_reference_sampler(x, labels, cutoff=0.5):
    """What the authors' `Sampler` returns, as (anchor, positive, negative) triplets.

    A NumPy transcription of the behaviour of
    CompVis/metric-learning-divide-and-conquer: lib/loss/sampler.py:50-98:
    distances sqrt(max(d^2, 1e-4)), K = (number of positive pairs) // B for
    the whole batch, the K smallest of d + 1e6 * (positive or d < cutoff) per
    row, positives and negatives paired in column order, rows truncated to the
    shorter list.
    """
    x = x.astype(np.float64)
    sq = np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0)
    d = np.sqrt(np.maximum(sq, 1e-4))
    pos = (labels[:, None] == labels[None]).astype(float) - np.eye(len(x))
    k = int(pos.sum()) // len(x)
    masked = d + 1e6 * ((pos > 0) | (d < cutoff))
    triplets = []
    for a in range(len(x)):
        chosen = np.sort(np.argsort(masked[a], kind="stable")[: max(1, min(k, len(x)))])
        positives = np.flatnonzero(pos[a] > 0)
        triplets += [(a, p, n) for p, n in zip(positives, chosen)]
    return triplets


def _run_closest(d, pos, neg, cutoff, jit=False):
    fn = miners.closest_negatives_beyond_cutoff
    if jit:
        fn = tf.function(fn, jit_compile=True)
    idx, valid, below = fn(tf.constant(d), tf.constant(pos), tf.constant(neg), cutoff)
    return idx.numpy(), valid.numpy(), below.numpy()


@pytest.mark.parametrize("seed,dim,cutoff", [(0, 3, 0.5), (1, 4, 0.5), (2, 3, 1.6), (3, 8, 1.5)])
@pytest.mark.parametrize("jit", [False, True])
def test_closest_negatives_beyond_cutoff_brute_force(seed, dim, cutoff, jit):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=14)
    labels[:5] = 5  # a big class: more positives than some rows have negatives beyond the cutoff
    labels[-1] = 9  # a singleton: no positive
    x = _sphere(rng, 14, dim)
    d = pairwise_euclidean(x).numpy()
    pos, neg = _masks(labels)
    idx, valid, below = _run_closest(d, pos, neg, cutoff, jit)
    ref = np_closest_beyond_cutoff(d, pos, neg, cutoff)
    assert set(zip(*np.nonzero(valid))) == set(ref)
    assert idx.min() >= 0 and idx.max() < 14
    for (a, p), (n, from_below) in ref.items():
        assert idx[a, p] == n and below[a, p] == from_below
        assert neg[a, n]
    assert not np.any(below & ~valid)
    # every positive pair gets a negative here (each row has enough negatives in all)
    assert np.array_equal(valid, pos)
    if cutoff > 1.0:
        assert any(from_below for _, from_below in ref.values())  # the fill is exercised


def test_closest_negatives_distinct_and_within_cutoff_when_available():
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(6), 4)
    x = _sphere(rng, 24, 16)  # 16 dimensions: almost all distances near sqrt(2)
    d = pairwise_euclidean(x).numpy()
    pos, neg = _masks(labels)
    idx, valid, below = _run_closest(d, pos, neg, 0.5)
    assert np.array_equal(valid, pos) and not below.any()
    for a in range(24):
        chosen = idx[a][pos[a]]
        assert len(set(chosen)) == 3  # three distinct negatives for three positives
        beyond = np.sort(d[a][neg[a] & (d[a] >= 0.5)])
        np.testing.assert_array_equal(np.sort(d[a, chosen]), beyond[:3])


def test_closest_negatives_run_out_of_negatives():
    # Class 0 has 4 members and only one negative: each anchor of class 0 has 3
    # positives but 1 negative, so only its first positive gets a triplet.
    labels = np.array([0, 0, 0, 0, 1])
    x = _sphere(np.random.default_rng(0), 5, 4)
    d = pairwise_euclidean(x).numpy()
    pos, neg = _masks(labels)
    idx, valid, below = _run_closest(d, pos, neg, 0.5)
    for a in range(4):
        first = np.flatnonzero(pos[a])[0]
        assert valid[a].tolist() == [p == first for p in range(5)]
        assert idx[a, first] == 4
    assert not valid[4].any()  # the singleton class has no positive
    same = np.zeros((3, 3), bool)
    _, v, _ = _run_closest(d[:3, :3], ~np.eye(3, dtype=bool), same, 0.5)
    assert not v.any()  # no negative at all


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closest_negatives_match_the_reference_sampler_on_balanced_batches(seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(5), 3)
    rng.shuffle(labels)
    x = _sphere(rng, 15, 6)
    d = pairwise_euclidean(x).numpy()
    pos, neg = _masks(labels)
    assert ((neg & (d >= 0.5)).sum(1) >= 2).all()  # every row has K = 2 negatives beyond 0.5
    idx, valid, below = _run_closest(d, pos, neg, 0.5)
    ours = sorted((a, p, idx[a, p]) for a, p in zip(*np.nonzero(valid)))
    assert ours == sorted(np_reference_sampler(x, labels))
    assert not below.any()


def test_short_rows_fill_from_below_the_cutoff_where_the_reference_uses_the_anchor():
    # Anchor 0's negatives are all closer than the cutoff.
    x = np.array([[1, 0, 0], [0, 1, 0], [0.99, 0.14, 0], [0.99, 0, 0.14], [0.97, 0.24, 0]], np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.array([0, 0, 1, 1, 1])
    d = pairwise_euclidean(x).numpy()
    pos, neg = _masks(labels)
    assert not (neg[0] & (d[0] >= 0.5)).any()
    idx, valid, below = _run_closest(d, pos, neg, 0.5)
    farthest_negative = 2 + int(np.argmax(d[0, 2:]))
    assert valid[0, 1] and below[0, 1] and idx[0, 1] == farthest_negative
    # The reference pairs anchor 0's positive with anchor 0 itself.
    reference = [t for t in np_reference_sampler(x, labels) if t[0] == 0]
    assert reference == [(0, 1, 0)]
