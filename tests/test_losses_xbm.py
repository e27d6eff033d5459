"""CrossBatchMemory: queue order / size / reset, brute-force NumPy references, saving, a D&C-like loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfdnc.losses import (
    ContrastiveLoss,
    CrossBatchMemory,
    MarginLoss,
    MultiSimilarityLoss,
    NPairLoss,
    TripletLoss,
    get_loss,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def unit(rng, n, dim):
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def class_batch(rng, classes, per_class, dim, num_labels=6):
    labels = np.repeat(rng.choice(num_labels, size=classes, replace=False), per_class).astype(np.int32)
    return labels, unit(rng, len(labels), dim)


class NumpyMemory:
    """A FIFO memory written the obvious way: a Python list of the last `size` entries by slot."""

    def __init__(self, size, dim):
        self.size, self.pointer, self.count = size, 0, 0
        self.x = np.zeros((size, dim), np.float64)
        self.y = np.zeros(size, np.int64)

    def enqueue(self, labels, x):
        positions = [(self.pointer + i) % self.size for i in range(len(labels))]
        for i, pos in enumerate(positions):
            self.x[pos], self.y[pos] = x[i], labels[i]
        self.pointer = (self.pointer + len(labels)) % self.size
        self.count = min(self.count + len(labels), self.size)
        return positions


def np_reference_loss(kind, labels, x, memory, self_pos, **kw):
    """Brute force over (anchor, memory entry) pairs, the anchor's own entry excluded."""
    valid = [j for j in range(memory.count)]
    d = np.sqrt(np.maximum(((x[:, None].astype(np.float64) - memory.x[None]) ** 2).sum(-1), 0))
    s = x.astype(np.float64) @ memory.x.T
    pos_of = lambda a: [j for j in valid if j != self_pos[a] and memory.y[j] == labels[a]]
    neg_of = lambda a: [j for j in valid if memory.y[j] != labels[a]]
    if kind == "contrastive":
        pt = np.array([max(d[a, j] - kw["pos_margin"], 0) for a in range(len(labels)) for j in pos_of(a)])
        nt = np.array([max(kw["neg_margin"] - d[a, j], 0) for a in range(len(labels)) for j in neg_of(a)])
        avg = lambda t: t.sum() / (t > 0).sum() if (t > 0).any() else 0.0
        return avg(pt) + avg(nt)
    if kind == "multi_similarity":
        total = 0.0
        for a in range(len(labels)):
            pos, neg = s[a, pos_of(a)], s[a, neg_of(a)]
            if not len(pos) or not len(neg):
                continue
            nk, pk = neg[neg + kw["epsilon"] > pos.min()], pos[pos - kw["epsilon"] < neg.max()]
            if len(nk) and len(pk):
                total += np.log1p(np.exp(-kw["alpha"] * (pk - kw["base"])).sum()) / kw["alpha"]
                total += np.log1p(np.exp(kw["beta"] * (nk - kw["base"])).sum()) / kw["beta"]
        return total / len(labels)
    # triplet
    terms = []
    hinge = (lambda g: np.log1p(np.exp(g))) if kw.get("soft_margin") else (lambda g: max(g + kw["margin"], 0))
    for a in range(len(labels)):
        pos, neg = pos_of(a), neg_of(a)
        if not pos or not neg:
            continue
        if kw["mining"] == "batch_all":
            terms += [hinge(d[a, p] - d[a, n]) for p in pos for n in neg]
        elif kw["mining"] == "batch_hard":
            terms.append(hinge(d[a, pos].max() - d[a, neg].min()))
        else:
            for p in pos:
                farther = [d[a, n] for n in neg if d[a, n] > d[a, p]]
                terms.append(hinge(d[a, p] - (min(farther) if farther else d[a, neg].max())))
    terms = np.array(terms)
    if kw["mining"] == "batch_all":
        return terms.sum() / (terms > 0).sum() if (terms > 0).any() else 0.0
    return terms.mean() if len(terms) else 0.0


CASES = [
    ("contrastive", {"pos_margin": 0.1, "neg_margin": 0.9}),
    ("multi_similarity", {"alpha": 2.0, "beta": 10.0, "base": 0.5, "epsilon": 0.1}),
    ("triplet", {"margin": 0.3, "mining": "batch_all"}),
    ("triplet", {"margin": 0.3, "mining": "batch_hard"}),
    ("triplet", {"margin": 0.3, "mining": "semi_hard"}),
    ("triplet", {"mining": "batch_hard", "soft_margin": True}),
]


@pytest.mark.parametrize("kind,options", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_memory_loss_matches_brute_force_over_several_batches(kind, options, seed):
    rng = np.random.default_rng(seed)
    size, dim = 20, 6
    loss = get_loss(kind, xbm_size=size, embedding_dim=dim, num_learners=2, **options)
    memory = NumpyMemory(size, dim)
    fn = tf.function(loss.compute_loss_and_stats)
    for step in range(4):  # 4 x 8 = 32 entries: the memory wraps around
        labels, x = class_batch(rng, 4, 2, dim)
        value, stats = fn(labels, x, learner=tf.constant(1))
        positions = memory.enqueue(labels, x)
        ref = np_reference_loss(kind, labels, x, memory, positions, **options)
        assert float(value) == pytest.approx(ref, rel=1e-4, abs=1e-6), step
        assert float(stats["memory_fill"]) == pytest.approx(memory.count / size)


def test_queue_order_size_and_wraparound():
    loss = CrossBatchMemory(ContrastiveLoss(), memory_size=10, embedding_dim=3, num_learners=2)
    batches = [(np.arange(4, dtype=np.int32) + 10 * k, np.full((4, 3), k + 1, np.float32)) for k in range(3)]
    for labels, x in batches:
        loss.compute_loss_and_stats(labels, x, learner=0)
    # slots 0-3: batch 0, then 4-7: batch 1, then batch 2 fills 8, 9 and overwrites 0, 1 (the oldest)
    np.testing.assert_array_equal(loss.memory_labels.numpy()[0], [22, 23, 2, 3, 10, 11, 12, 13, 20, 21])
    np.testing.assert_array_equal(loss.memory_embeddings.numpy()[0][:, 0], [3, 3, 1, 1, 2, 2, 2, 2, 3, 3])
    assert loss.memory_count.numpy().tolist() == [10, 0, 0] and loss.memory_pointer.numpy().tolist() == [2, 0, 0]


def test_one_memory_per_learner_and_reset_when_clusters_change():
    rng = np.random.default_rng(0)
    loss = get_loss("contrastive", xbm_size=32, embedding_dim=4, num_learners=3)
    labels, x = class_batch(rng, 4, 2, 4)
    loss.compute_loss_and_stats(labels, x, learner=tf.constant(2))
    loss.compute_loss_and_stats(labels, x, learner=None)  # full embedding: its own memory
    loss.compute_loss_and_stats(labels, x, learner=2)
    assert loss.memory_count.numpy().tolist() == [0, 0, 16, 8]
    with pytest.raises(ValueError, match="learner"):
        loss.compute_loss_and_stats(labels, x, learner=3)
    loss.on_clusters_changed()
    assert loss.memory_count.numpy().tolist() == [0, 0, 0, 0] and not loss.memory_embeddings.numpy().any()
    # An empty memory holds only the batch: the loss is the wrapped loss on the batch alone.
    after_reset = loss.compute_loss_and_stats(labels, x, learner=1)[0]
    assert float(after_reset) == pytest.approx(float(ContrastiveLoss()(labels, x)), rel=1e-5)
    # Evaluation neither writes nor reads the memory.
    before = loss.memory_count.numpy().copy()
    value = loss.compute_loss_and_stats(labels, x, learner=1, training=False)[0]
    assert float(value) == pytest.approx(float(ContrastiveLoss()(labels, x)), rel=1e-5)
    np.testing.assert_array_equal(loss.memory_count.numpy(), before)


def test_start_step_and_batch_loss_follow_the_xbm_authors_code():
    rng = np.random.default_rng(4)
    batches = [class_batch(rng, 4, 2, 5) for _ in range(4)]
    plain = ContrastiveLoss()
    memory_only = CrossBatchMemory(ContrastiveLoss(), memory_size=24, embedding_dim=5)
    late = CrossBatchMemory(ContrastiveLoss(), memory_size=24, embedding_dim=5, start_step=2)
    both = CrossBatchMemory(ContrastiveLoss(), memory_size=24, embedding_dim=5, batch_loss=True, memory_weight=0.5)
    fn = tf.function(late.compute_loss_and_stats)
    for i, (labels, x) in enumerate(batches):
        batch = float(plain(labels, x))
        value = float(fn(labels, x)[0])
        if i < 2:  # before start_step: the batch alone, nothing written
            assert value == pytest.approx(batch, rel=1e-5) and late.memory_count.numpy()[1] == 0
        memory = float(memory_only(labels, x))
        assert float(both(labels, x)) == pytest.approx(batch + 0.5 * memory, rel=1e-5)
    assert late.memory_count.numpy()[1] == 16 and int(late.steps.numpy()) == 4
    # from start_step on it is the memory loss of the batches written since
    fresh = CrossBatchMemory(ContrastiveLoss(), memory_size=24, embedding_dim=5)
    for labels, x in batches[2:]:
        expected = float(fresh(labels, x))
    assert value == pytest.approx(expected, rel=1e-5)
    late.on_clusters_changed()
    assert int(late.steps.numpy()) == 4  # the warm-up is not repeated after a re-clustering
    restored = keras.losses.deserialize(keras.losses.serialize(both))
    assert restored.get_config() == both.get_config() and restored.batch_loss and restored.memory_weight == 0.5


def test_anchors_get_a_finite_gradient_and_xla_compiles():
    rng = np.random.default_rng(3)
    loss = get_loss("triplet", mining="batch_hard", xbm_size=24, embedding_dim=5)
    old_labels, old_x = class_batch(rng, 4, 2, 5)
    loss.compute_loss_and_stats(old_labels, old_x)
    labels, x = class_batch(rng, 4, 2, 5)
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = tf.function(loss.compute_loss_and_stats, jit_compile=True)(labels, x)[0]
    grad = tape.gradient(value, x)
    assert grad is not None and np.all(np.isfinite(grad.numpy())) and np.abs(grad.numpy()).sum() > 0
    assert loss.memory_count.numpy().tolist() == [0, 16]  # learner None: the full-embedding memory


def test_invalid_wrapping_is_refused():
    with pytest.raises(ValueError, match="pair-based"):
        get_loss("npair", xbm_size=16, embedding_dim=4)
    with pytest.raises(ValueError, match="pair-based"):
        get_loss("proxy_anchor", xbm_size=16, embedding_dim=4, num_classes=3)
    with pytest.raises(ValueError, match="symmetrical"):
        CrossBatchMemory(TripletLoss(symmetrical=True), memory_size=16, embedding_dim=4)
    with pytest.raises(ValueError, match="embedding_dim"):
        CrossBatchMemory(TripletLoss(), memory_size=16)
    loss = CrossBatchMemory(TripletLoss(), memory_size=4, embedding_dim=4)
    with pytest.raises(ValueError, match="memory_size"):
        loss(np.zeros(8, np.int32), np.zeros((8, 4), np.float32))
    with pytest.raises(ValueError, match="embedding size"):
        loss(np.zeros(2, np.int32), np.zeros((2, 3), np.float32))
    assert isinstance(NPairLoss(), type(NPairLoss()))


@keras.saving.register_keras_serializable(package="tfdnc_test")
class Holder(keras.Model):
    """A model that tracks a loss's variables layer, as DivideAndConquerModel does."""

    def __init__(self, loss_config, **kwargs):
        super().__init__(**kwargs)
        self.loss_config = loss_config
        self.metric_loss = keras.losses.deserialize(loss_config)
        self.loss_weights_layer = self.metric_loss.variables_layer
        self.dense = keras.layers.Dense(4)

    def call(self, x):
        return self.dense(x)

    def get_config(self):
        return {"loss_config": self.loss_config}


def _filled_holder(seed=0):
    rng = np.random.default_rng(seed)
    loss = CrossBatchMemory(MarginLoss(learnable_beta=True, num_classes=6), memory_size=12, embedding_dim=4,
                            num_learners=2)
    model = Holder(keras.losses.serialize(loss))
    model(np.zeros((1, 3), np.float32))
    for learner in (0, 1, 1):
        labels, x = class_batch(rng, 4, 2, 4)
        model.metric_loss.compute_loss_and_stats(labels, x, learner=learner)
    return model


def test_memory_and_wrapped_variables_restore_through_save_and_load(tmp_path):
    model = _filled_holder()
    xbm = model.metric_loss
    assert [v.name for v in xbm.trainable_variables] == ["beta"]  # the wrapped loss's, for the loss optimizer
    xbm.trainable_variables[0].assign(np.linspace(0.5, 1.5, 6))
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "w.weights.h5")
    restored = keras.models.load_model(tmp_path / "m.keras")
    fresh = _filled_holder(seed=9)
    fresh.metric_loss.on_clusters_changed()
    fresh.load_weights(tmp_path / "w.weights.h5")
    for other in (restored, fresh):
        for name in ("memory_embeddings", "memory_labels", "memory_count", "memory_pointer"):
            np.testing.assert_array_equal(getattr(other.metric_loss, name).numpy(), getattr(xbm, name).numpy())
        np.testing.assert_allclose(other.metric_loss.trainable_variables[0].numpy(), np.linspace(0.5, 1.5, 6))
    # Resumed, the queue continues where it stopped: the next batch goes to slots 4..11 of learner 1.
    labels = np.arange(8, dtype=np.int32) % 6
    restored.metric_loss.compute_loss_and_stats(labels, unit(np.random.default_rng(5), 8, 4), learner=1)
    np.testing.assert_array_equal(restored.metric_loss.memory_labels.numpy()[1][4:12], labels)


def test_tiny_divide_and_conquer_loop_learns_with_a_memory_per_learner():
    """Two clusters of classes, alternating batches, a re-clustering halfway: the loss falls, memories reset."""
    rng = np.random.default_rng(0)
    dim, features = 8, 12
    centers = rng.normal(size=(8, features)).astype(np.float32)
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((features,)), keras.layers.Dense(dim)])
    loss = get_loss("margin", xbm_size=64, embedding_dim=dim, num_learners=2, negative_sampling="closest_beyond_cutoff")
    optimizer = keras.optimizers.Adam(0.02)

    @tf.function
    def step(images, labels, cluster):
        with tf.GradientTape() as tape:
            z = tf.math.l2_normalize(net(images), axis=1)
            value, stats = loss.compute_loss_and_stats(labels, z, learner=cluster)
        optimizer.apply(tape.gradient(value, net.trainable_variables), net.trainable_variables)
        return value

    def batch_of(cluster):
        classes = rng.choice(np.arange(cluster, 8, 2), size=4, replace=False)
        labels = np.repeat(classes, 4).astype(np.int32)
        return centers[labels] + 0.3 * rng.normal(size=(16, features)).astype(np.float32), labels

    first, last = [], []
    for it in range(40):
        cluster = it % 2
        images, labels = batch_of(cluster)
        value = float(step(images, labels, tf.constant(cluster)))
        (first if it < 6 else last).append(value)
        if it == 20:
            assert loss.memory_count.numpy().tolist() == [64, 64, 0]
            loss.on_clusters_changed()
            assert loss.memory_count.numpy().tolist() == [0, 0, 0]
    assert np.mean(last[-6:]) < np.mean(first)
    assert loss.memory_count.numpy().tolist() == [64, 64, 0]


# --- MirroredStrategy on 2 logical CPU devices ---------------------------------------


def _mirrored_report():
    """Runs in a fresh interpreter (logical devices must be set before TF starts)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    rng = np.random.default_rng(0)
    batches = [class_batch(rng, 4, 3, 6) for _ in range(4)]

    def run(strategy):
        with strategy.scope():
            loss = get_loss("contrastive", xbm_size=30, embedding_dim=6, num_learners=2)
        fn = tf.function(lambda y, x, k: loss.compute_loss_and_stats(y, x, learner=k)[0])
        values = []
        for i, (labels, x) in enumerate(batches):
            # every replica gets the global batch, as after the model's all-gather
            out = strategy.run(fn, args=(tf.constant(labels), tf.constant(x), tf.constant(i % 2)))
            per_replica = [float(v) for v in strategy.experimental_local_results(out)]
            values.append(per_replica)
        variable = loss.memory_embeddings.value
        copies = [np.asarray(v).tolist() for v in getattr(variable, "values", [variable])]
        return values, copies, loss.memory_count.numpy().tolist()

    mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    single = run(tf.distribute.get_strategy())
    return {"mirrored": mirrored, "single": single}


def test_memory_under_mirrored_strategy_matches_one_device():
    out = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, HERE])})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    (m_values, m_copies, m_count), (s_values, s_copies, s_count) = report["mirrored"], report["single"]
    assert len(m_copies) == 2 and np.array_equal(m_copies[0], m_copies[1])  # both replicas hold the same memory
    np.testing.assert_allclose(m_copies[0], s_copies[0], atol=1e-6)
    assert m_count == s_count == [24, 24, 0]
    for per_replica, (single,) in zip(m_values, s_values):
        np.testing.assert_allclose(per_replica, [single, single], rtol=1e-5)


if __name__ == "__main__":
    print(json.dumps(_mirrored_report()))
