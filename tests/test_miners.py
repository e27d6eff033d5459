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
