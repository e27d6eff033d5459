"""Proxy-Anchor: brute-force NumPy reference, proxies per learner, serialisation and saving."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfdnc.losses import ProxyAnchorLoss, get_loss


def np_proxy_anchor(labels, x, proxies, margin, alpha):
    """The paper's formula with loops: every proxy as an anchor."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    pn = proxies / np.linalg.norm(proxies, axis=1, keepdims=True)
    s = xn.astype(np.float64) @ pn.T.astype(np.float64)
    num_classes = len(proxies)
    pos_total, with_pos, neg_total = 0.0, 0, 0.0
    for c in range(num_classes):
        pos = [i for i in range(len(labels)) if labels[i] == c]
        neg = [i for i in range(len(labels)) if labels[i] != c]
        if pos:
            with_pos += 1
            pos_total += np.log1p(sum(np.exp(-alpha * (s[i, c] - margin)) for i in pos))
        neg_total += np.log1p(sum(np.exp(alpha * (s[i, c] + margin)) for i in neg))
    return pos_total / with_pos + neg_total / num_classes


@pytest.mark.parametrize("seed,classes,per_class,dim,num_classes", [(0, 3, 2, 8, 5), (1, 4, 3, 16, 10), (2, 6, 1, 4, 6)])
@pytest.mark.parametrize("margin,alpha", [(0.1, 32.0), (0.0, 4.0)])
def test_proxy_anchor_matches_reference(seed, classes, per_class, dim, num_classes, margin, alpha):
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.choice(num_classes, classes, replace=False), per_class).astype(np.int32)
    x = rng.normal(size=(len(labels), dim)).astype(np.float32)
    loss = ProxyAnchorLoss(num_classes=num_classes, embedding_dim=dim, num_learners=2, margin=margin, alpha=alpha)
    proxies = rng.normal(size=(3, num_classes, dim)).astype(np.float32)
    loss.proxies.assign(proxies)
    for learner, slot in ((0, 0), (tf.constant(1), 1), (None, 2)):
        value, stats = tf.function(loss.compute_loss_and_stats)(labels, x, learner=learner)
        ref = np_proxy_anchor(labels, x, proxies[slot], margin, alpha)
        assert float(value) == pytest.approx(ref, rel=1e-4), slot
        assert 0.0 <= float(stats["active_fraction"]) <= 1.0
        assert float(stats["proxies_with_positives"]) == classes


def test_a_learner_trains_only_its_own_proxies():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 2).astype(np.int32)
    x = tf.constant(rng.normal(size=(8, 6)).astype(np.float32))
    loss = ProxyAnchorLoss(num_classes=4, embedding_dim=6, num_learners=3, seed=1)
    assert loss.trainable_variables[0].shape == (4, 4, 6)
    with tf.GradientTape() as tape:
        value = loss.compute_loss_and_stats(labels, x, learner=tf.constant(2))[0]
    grad = tape.gradient(value, loss.trainable_variables)[0].numpy()
    assert np.abs(grad[2]).sum() > 0 and not grad[[0, 1, 3]].any()
    # A few steps of the proxies' own optimizer lower the loss.
    optimizer = keras.optimizers.Adam(0.05)
    before = float(value)
    for _ in range(20):
        with tf.GradientTape() as tape:
            value = loss.compute_loss_and_stats(labels, x, learner=2)[0]
        optimizer.apply(tape.gradient(value, loss.trainable_variables), loss.trainable_variables)
    assert float(value) < before


def test_proxy_anchor_serialises_saves_and_refuses_bad_input(tmp_path):
    loss = get_loss("proxy_anchor", num_classes=5, embedding_dim=4, num_learners=2, margin=0.2, alpha=16, seed=3)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is ProxyAnchorLoss and restored.get_config() == loss.get_config()
    # same seed, same initial proxies
    np.testing.assert_array_equal(restored.proxies.numpy(), loss.proxies.numpy())

    class Holder(keras.Model):
        def __init__(self, metric_loss):
            super().__init__()
            self.loss_weights_layer = metric_loss.variables_layer
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Holder(loss)
    model(np.zeros((1, 3), np.float32))
    loss.proxies.assign(np.full((3, 5, 4), 0.25, np.float32))
    model.save_weights(tmp_path / "w.weights.h5")
    other = ProxyAnchorLoss(num_classes=5, embedding_dim=4, num_learners=2)
    fresh = Holder(other)
    fresh(np.zeros((1, 3), np.float32))
    fresh.load_weights(tmp_path / "w.weights.h5")
    np.testing.assert_array_equal(other.proxies.numpy(), 0.25)
    with pytest.raises(ValueError, match="num_classes"):
        ProxyAnchorLoss(embedding_dim=4)
    with pytest.raises(ValueError, match="sample_weight"):
        loss(np.zeros(2, np.int32), np.ones((2, 4), np.float32), sample_weight=np.ones(2, np.float32))
    with pytest.raises(ValueError, match="embedding size"):
        loss(np.zeros(2, np.int32), np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="symmetrical"):
        ProxyAnchorLoss(num_classes=2, embedding_dim=2, symmetrical=True)
