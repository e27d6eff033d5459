import numpy as np
import pytest
import tensorflow as tf

from tfdnc import distances


def _np_dist(x, y):
    return np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))


@pytest.mark.parametrize("seed,n,m,d", [(0, 5, 7, 3), (1, 9, 4, 16), (2, 6, 6, 32)])
def test_pairwise_matches_numpy(seed, n, m, d):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.normal(size=(m, d)).astype(np.float32)
    ref = _np_dist(x, y)
    np.testing.assert_allclose(distances.pairwise_euclidean(x, y), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        distances.pairwise_squared_euclidean(x, y), ref**2, rtol=1e-4, atol=1e-4
    )
    cos = (x @ y.T) / np.linalg.norm(x, axis=1)[:, None] / np.linalg.norm(y, axis=1)[None]
    np.testing.assert_allclose(distances.pairwise_cosine_similarity(x, y), cos, atol=1e-5)
    np.testing.assert_allclose(distances.pairwise_distance(x, y, "cosine"), 1 - cos, atol=1e-5)
    np.testing.assert_allclose(distances.pairwise_dot(x, y), x @ y.T, rtol=1e-5, atol=1e-5)
    self_d = distances.pairwise_euclidean(x).numpy()
    np.testing.assert_allclose(self_d, _np_dist(x, x), atol=1e-3)
    assert np.all(np.diag(self_d) == 0)


def test_gradient_finite_at_duplicates():
    x = tf.constant([[0.6, 0.8], [0.6, 0.8], [1.0, 0.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(distances.pairwise_euclidean(x))
    grad = tape.gradient(total, x).numpy()
    assert np.all(np.isfinite(grad))
    # Only the third point pulls on the duplicates: d/dx_0 of 2 ||x_0 - x_2||.
    expected = 2 * (x[0] - x[2]) / np.linalg.norm(x[0] - x[2])
    np.testing.assert_allclose(grad[0], expected, atol=1e-4)


def test_bad_input_names_argument():
    with pytest.raises(ValueError, match="`x`"):
        distances.pairwise_euclidean(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="metric"):
        distances.pairwise_distance(np.zeros((2, 3), np.float32), metric="manhattan")
    with pytest.raises(ValueError, match="same embedding size"):
        distances.pairwise_dot(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))
