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


def np_margin(labels, x, neg_idx, alpha=0.2, beta=1.2, nu=0.0, d=None, valid=None):
    """`neg_idx[a, p]` serves the pair (a, p); `valid` (B, B) bool, if given, keeps only those pairs."""
    d = np_dist(x) if d is None else d
    beta = np.broadcast_to(beta, (labels.max() + 1,))
    total, count, active, triplets = 0.0, 0, 0, 0
    for a in range(len(labels)):
        if not np.any(labels != labels[a]):
            continue
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            if valid is not None and not valid[a, p]:
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


def np_closest_negatives(labels, d, cutoff=0.5):
    """(neg_idx, valid) of the CVPR selection, by the brute force of test_miners."""
    from test_miners import np_closest_beyond_cutoff

    same = labels[:, None] == labels[None]
    pos, neg = same & ~np.eye(len(labels), dtype=bool), ~same
    chosen = np_closest_beyond_cutoff(d, pos, neg, cutoff)
    neg_idx = np.zeros(d.shape, int)
    valid = np.zeros(d.shape, bool)
    for (a, p), (n, _) in chosen.items():
        neg_idx[a, p], valid[a, p] = n, True
    return neg_idx, valid


@pytest.mark.parametrize("seed,classes,per_class,dim", SHAPES + [(3, 3, 5, 3)])
@pytest.mark.parametrize("options", [{}, {"cutoff": 1.2, "beta": 1.0}, {"learnable": True}])
def test_margin_closest_beyond_cutoff_matches_reference(seed, classes, per_class, dim, options):
    labels, x = batch(seed, classes, per_class, dim)
    options = dict(options)
    beta, nu = options.get("beta", 1.2), 0.0
    kwargs = {"negative_sampling": "closest_beyond_cutoff", "cutoff": options.get("cutoff", 0.5), "beta": beta}
    if options.pop("learnable", False):
        beta = np.linspace(0.9, 1.3, classes)
        nu = 0.05
        kwargs.update(learnable_beta=True, num_classes=classes, nu=nu)
    loss = MarginLoss(**kwargs)
    if loss.learnable_beta:
        loss.beta.assign(beta.astype(np.float32))
    value, stats = loss.compute_loss_and_stats(labels, x)
    d = np_dist(x)
    neg_idx, valid = np_closest_negatives(labels, d.astype(np.float32), kwargs["cutoff"])
    ref, ref_active = np_margin(labels, x, neg_idx, beta=beta, nu=nu, valid=valid)
    assert float(value) == pytest.approx(ref, rel=1e-5)
    assert float(stats["active_fraction"]) == pytest.approx(ref_active)
    assert float(stats["num_triplets"]) == valid.sum()
    assert 0.0 <= float(stats["below_cutoff_fraction"]) <= 1.0
    # deterministic: the same value again, and under XLA
    assert float(loss(labels, x)) == pytest.approx(float(value), rel=1e-6)
    fn = tf.function(loss.compute_loss_and_stats, jit_compile=True)
    assert float(fn(tf.constant(labels), tf.constant(x))[0]) == pytest.approx(float(value), rel=1e-5)


def test_margin_closest_beyond_cutoff_fills_short_rows_and_keeps_a_gradient():
    # A collapsed batch: every distance is below the cutoff, as early in training.
    labels, x = batch(0, 4, 3, 8)
    x = x * 0.05 + np.eye(8, dtype=np.float32)[0]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert np_dist(x).max() < 0.5
    loss = MarginLoss(negative_sampling="closest_beyond_cutoff")
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value, stats = loss.compute_loss_and_stats(labels, x)
    grad = tape.gradient(value, x).numpy()
    assert float(stats["below_cutoff_fraction"]) == 1.0 and float(stats["num_triplets"]) == 24
    assert float(value) > 0 and np.all(np.abs(grad).sum(1) > 0)


def test_margin_negative_sampling_option():
    assert MarginLoss().negative_sampling == "distance_weighted"
    loss = MarginLoss(negative_sampling="closest_beyond_cutoff", cutoff=0.6)
    config = loss.get_config()
    assert config["negative_sampling"] == "closest_beyond_cutoff" and config["cutoff"] == 0.6
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert restored.negative_sampling == "closest_beyond_cutoff"
    assert MarginLoss.from_config(config).get_config() == config
    labels, x = batch(1, 4, 3, 8)
    assert float(restored(labels, x)) == pytest.approx(float(loss(labels, x)), rel=1e-6)
    with pytest.raises(ValueError, match="negative_sampling"):
        MarginLoss(negative_sampling="closest")


def test_margin_needs_num_classes_when_learnable():
    with pytest.raises(ValueError, match="num_classes"):
        MarginLoss(learnable_beta=True)
    with pytest.raises(ValueError, match="cutoff"):
        MarginLoss(cutoff=1.5, nonzero_loss_cutoff=1.4)


# --- triplet --------------------------------------------------------------------


def np_triplet(labels, x, margin, mining, metric, d=None):
    d = np_dist(x, metric) if d is None else d
    n = len(labels)
    terms = []
    for a in range(n):
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [k for k in range(n) if labels[k] != labels[a]]
        if not pos or not neg:
            continue
        if mining == "batch_all":
            terms += [max(d[a, p] - d[a, k] + margin, 0) for p in pos for k in neg]
        elif mining == "batch_hard":
            terms.append(max(max(d[a, pos]) - min(d[a, neg]) + margin, 0))
        else:
            for p in pos:
                farther = [d[a, k] for k in neg if d[a, k] > d[a, p]]
                dn = min(farther) if farther else max(d[a, neg])
                terms.append(max(d[a, p] - dn + margin, 0))
    terms = np.array(terms)
    active = (terms > 0).sum()
    if mining == "batch_all":
        loss = terms.sum() / active if active else 0.0
    else:
        loss = terms.mean()
    return loss, active / len(terms)


@pytest.mark.parametrize("seed,classes,per_class,dim", SHAPES)
@pytest.mark.parametrize("mining", ["batch_all", "batch_hard", "semi_hard"])
@pytest.mark.parametrize("metric", ["euclidean", "squared_euclidean", "cosine"])
def test_triplet_matches_reference(seed, classes, per_class, dim, mining, metric):
    labels, x = batch(seed, classes, per_class, dim)
    loss = TripletLoss(margin=0.3, mining=mining, distance=metric)
    value, stats = loss.compute_loss_and_stats(labels, x)
    ref, ref_active = np_triplet(labels, x, 0.3, mining, metric)
    assert float(value) == pytest.approx(ref, rel=1e-4, abs=1e-6)
    assert float(stats["active_fraction"]) == pytest.approx(ref_active, abs=1e-6)


# --- contrastive ----------------------------------------------------------------


def np_contrastive(labels, x, pos_margin, neg_margin, d=None):
    d = np_dist(x) if d is None else d
    pos_terms, neg_terms = [], []
    for i in range(len(labels)):
        for j in range(len(labels)):
            if i == j:
                continue
            if labels[i] == labels[j]:
                pos_terms.append(max(d[i, j] - pos_margin, 0))
            else:
                neg_terms.append(max(neg_margin - d[i, j], 0))
    pos_terms, neg_terms = np.array(pos_terms), np.array(neg_terms)
    avg = lambda t: t.sum() / (t > 0).sum() if (t > 0).any() else 0.0
    active = ((pos_terms > 0).sum() + (neg_terms > 0).sum()) / (len(pos_terms) + len(neg_terms))
    return avg(pos_terms) + avg(neg_terms), active


@pytest.mark.parametrize("seed,classes,per_class,dim", SHAPES)
@pytest.mark.parametrize("margins", [(0.0, 0.5), (0.3, 1.3)])
def test_contrastive_matches_reference(seed, classes, per_class, dim, margins):
    labels, x = batch(seed, classes, per_class, dim)
    value, stats = ContrastiveLoss(*margins).compute_loss_and_stats(labels, x)
    ref, ref_active = np_contrastive(labels, x, *margins)
    assert float(value) == pytest.approx(ref, rel=1e-4, abs=1e-6)
    assert float(stats["active_fraction"]) == pytest.approx(ref_active)


# --- multi-similarity -----------------------------------------------------------


def np_multi_similarity(labels, x, alpha, beta, base, eps, s=None):
    s = x.astype(np.float64) @ x.T.astype(np.float64) if s is None else s
    n = len(labels)
    total, kept, candidates = 0.0, 0, n * (n - 1)
    for i in range(n):
        pos = np.array([s[i, j] for j in range(n) if j != i and labels[j] == labels[i]])
        neg = np.array([s[i, k] for k in range(n) if labels[k] != labels[i]])
        if not len(pos) or not len(neg):
            continue
        neg_kept = neg[neg + eps > pos.min()]
        pos_kept = pos[pos - eps < neg.max()]
        if not len(neg_kept) or not len(pos_kept):
            continue
        kept += len(neg_kept) + len(pos_kept)
        total += np.log1p(np.exp(-alpha * (pos_kept - base)).sum()) / alpha
        total += np.log1p(np.exp(beta * (neg_kept - base)).sum()) / beta
    return total / n, kept / candidates


@pytest.mark.parametrize("seed,classes,per_class,dim", SHAPES)
@pytest.mark.parametrize("params", [(2.0, 50.0, 0.5, 0.1), (1.0, 10.0, 0.0, 0.3)])
def test_multi_similarity_matches_reference(seed, classes, per_class, dim, params):
    labels, x = batch(seed, classes, per_class, dim)
    value, stats = MultiSimilarityLoss(*params).compute_loss_and_stats(labels, x)
    ref, ref_active = np_multi_similarity(labels, x, *params)
    assert float(value) == pytest.approx(ref, rel=1e-4, abs=1e-6)
    assert float(stats["active_fraction"]) == pytest.approx(ref_active)


# --- all losses -------------------------------------------------------------------

ALL = [
    ("margin", {}),
    ("margin", {"negative_sampling": "closest_beyond_cutoff"}),
    ("triplet", {"mining": "batch_all"}),
    ("triplet", {"mining": "semi_hard", "distance": "squared_euclidean"}),
    ("triplet", {"mining": "batch_hard"}),
    ("contrastive", {}),
    ("multi_similarity", {}),
]


@pytest.mark.parametrize("name,options", ALL)
def test_gradients_finite_at_duplicate_embeddings(name, options):
    labels, x = batch(0, 3, 4, 8)
    x[1] = x[0]  # same class duplicate
    x[labels == labels[2]] = x[2]  # a whole class collapsed to one point
    x = tf.constant(x)
    loss = get_loss(name, **options)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss(labels, x)
    grad = tape.gradient(value, x)
    assert np.isfinite(float(value))
    assert grad is not None and np.all(np.isfinite(grad.numpy()))


@pytest.mark.parametrize("name,options", ALL + [("margin", {"learnable_beta": True, "num_classes": 3})])
def test_serialization_round_trip(name, options):
    loss = get_loss(name, **options)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    clone = type(loss).from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()


@pytest.mark.parametrize("name,options", ALL)
def test_compiles_with_xla_and_accepts_column_labels(name, options):
    labels, x = batch(1, 4, 2, 8)
    loss = get_loss(name, seed=0, **options) if name == "margin" else get_loss(name, **options)
    fn = tf.function(loss.compute_loss_and_stats, jit_compile=True)
    value, stats = fn(tf.constant(labels[:, None]), tf.constant(x))
    assert np.isfinite(float(value)) and 0.0 <= float(stats["active_fraction"]) <= 1.0
    if name != "margin":  # margin draws new negatives on every call
        eager = loss(tf.cast(labels, tf.float32), x)  # Keras casts y_true to floatx
        assert float(value) == pytest.approx(float(eager), rel=1e-5, abs=1e-7)


def test_get_loss_and_bad_input():
    assert isinstance(get_loss("multi-similarity"), MultiSimilarityLoss)
    with pytest.raises(ValueError, match="Unknown loss name"):
        get_loss("hinge")
    with pytest.raises(ValueError, match="mining"):
        TripletLoss(mining="hardest")
    with pytest.raises(ValueError, match="y_pred"):
        TripletLoss()(np.zeros(4), np.zeros((4, 2, 2), np.float32))
    with pytest.raises(ValueError, match="y_true"):
        TripletLoss()(np.zeros((4, 2)), np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="4 embeddings"):
        TripletLoss()(np.zeros(5), np.zeros((4, 3), np.float32))
    assert all(issubclass(type(get_loss(n, **o)), MetricLoss) for n, o in ALL)


def test_learnable_beta_saves_with_a_model_that_tracks_the_loss_layer(tmp_path):
    class Holder(keras.Model):
        def __init__(self, loss):
            super().__init__()
            self.loss_parameters = loss.variables_layer
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    loss = MarginLoss(learnable_beta=True, num_classes=4)
    assert loss.variables_layer.trainable_weights[0] is loss.trainable_variables[0]
    assert MarginLoss().variables_layer is None and MarginLoss().trainable_variables == []
    model = Holder(loss)
    model(np.zeros((1, 3), np.float32))
    loss.trainable_variables[0].assign([0.5, 1.0, 1.5, 2.0])
    model.save_weights(tmp_path / "w.weights.h5")
    fresh_loss = MarginLoss(learnable_beta=True, num_classes=4)
    fresh = Holder(fresh_loss)
    fresh(np.zeros((1, 3), np.float32))
    fresh.load_weights(tmp_path / "w.weights.h5")
    np.testing.assert_allclose(fresh_loss.trainable_variables[0].numpy(), [0.5, 1.0, 1.5, 2.0])
