"""DivideAndConquerModel: per-cluster steps, phases, saving, resuming optimizer state."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfdnc.losses import MarginLoss, TripletLoss
from tfdnc.model import DivideAndConquerModel


def _batch(cluster, n_classes=4, per_class=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class).astype("int32")
    images = rng.uniform(0, 255, size=(len(labels), size, size, 1)).astype("float32")
    return {"images": tf.constant(images), "cluster": tf.fill([len(labels)], cluster)}, tf.constant(labels)


def _values(variables):
    return [np.array(v.numpy() if hasattr(v, "numpy") else keras.ops.convert_to_numpy(v)) for v in variables]


def test_call_gives_unit_norm_full_embedding_and_learner_embeddings(make_tiny_model):
    model = make_tiny_model(embedding_dim=12, k_max=4)
    x, _ = _batch(0)
    out = model(x["images"]).numpy()
    assert out.shape == (16, 12)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    learners = model.learner_embeddings(x["images"]).numpy()
    assert learners.shape == (16, 4, 12)
    assert model.features(x["images"]).shape[0] == 16


def test_step_trains_only_the_batch_learner_mask(make_tiny_model):
    model = make_tiny_model(k_max=4, mask_loss_weight=0.0, loss=TripletLoss(margin=0.5, mining="batch_all"))
    model.masks.set_num_active(4)
    before = keras.ops.convert_to_numpy(model.masks.masks).copy()
    head_before = model.head.kernel.numpy().copy()
    x, y = _batch(cluster=2)
    logs = model.train_step((x, y))
    after = keras.ops.convert_to_numpy(model.masks.masks)
    changed = np.abs(after - before).max(axis=1) > 0
    assert changed.tolist() == [False, False, True, False]
    assert np.abs(model.head.kernel.numpy() - head_before).max() > 0
    assert float(logs["K"]) == 4.0 and 0.0 <= float(logs["active_fraction"]) <= 1.0


def test_mask_loss_moves_all_active_masks_and_is_logged(make_tiny_model):
    model = make_tiny_model(k_max=4, mask_loss_weight=1.0)
    model.masks.set_num_active(2)
    rng = np.random.default_rng(0)
    model.masks.masks.assign(rng.uniform(0.5, 1.5, size=(4, 16)).astype("float32"))
    before = keras.ops.convert_to_numpy(model.masks.masks).copy()
    logs = model.train_step(_batch(cluster=0))
    after = keras.ops.convert_to_numpy(model.masks.masks)
    assert np.abs(after[1] - before[1]).max() > 0  # moved by the mask loss alone
    np.testing.assert_array_equal(after[2:], before[2:])  # inactive masks stay
    assert float(logs["mask_loss"]) > 0


def test_full_embedding_phase_leaves_masks_alone(make_tiny_model):
    model = make_tiny_model(k_max=2)
    model.masks.set_num_active(2)
    model.full_embedding = True
    before = keras.ops.convert_to_numpy(model.masks.masks).copy()
    logs = model.train_step(_batch(cluster=1))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.masks.masks), before)
    assert float(logs["mask_loss"]) == 0.0


def test_frozen_backbone_epoch_updates_head_only(make_tiny_model):
    model = make_tiny_model()
    model.backbone_frozen = True
    backbone_before = _values(model.backbone.weights)
    head_before = model.head.kernel.numpy().copy()
    model.train_step(_batch(cluster=0))
    for a, b in zip(backbone_before, _values(model.backbone.weights)):
        np.testing.assert_array_equal(a, b)  # BatchNorm statistics included
    assert np.abs(model.head.kernel.numpy() - head_before).max() > 0


def test_learnable_beta_trains_and_saves_with_the_model(make_tiny_model, tmp_path):
    loss = MarginLoss(learnable_beta=True, num_classes=4)
    model = make_tiny_model(loss=loss)
    beta = loss.trainable_variables[0]
    before = keras.ops.convert_to_numpy(beta).copy()
    model.train_step(_batch(cluster=0))
    trained = keras.ops.convert_to_numpy(beta).copy()
    assert np.abs(trained - before).max() > 0
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded.metric_loss.trainable_variables[0]), trained)


def test_save_and_load_keras_gives_identical_embeddings_and_state(make_tiny_model, tmp_path):
    model = make_tiny_model(k_max=4)
    model.masks.grow()
    model.train_step(_batch(cluster=1))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x, _ = _batch(0, seed=3)
    np.testing.assert_allclose(loaded(x["images"]).numpy(), model(x["images"]).numpy(), atol=1e-6)
    np.testing.assert_allclose(loaded.learner_embeddings(x["images"]).numpy(),
                               model.learner_embeddings(x["images"]).numpy(), atol=1e-6)
    assert loaded.num_learners == 2
    assert loaded.masks.mode == "learnable" and loaded.embedding_dim == model.embedding_dim
    assert int(loaded.optimizer.iterations) == 1 and int(loaded.mask_optimizer.iterations) == 1


def test_weights_file_restores_both_optimizers(make_tiny_model, tmp_path):
    model = make_tiny_model(k_max=2)
    model.masks.grow()
    for step in range(3):
        model.train_step(_batch(cluster=step % 2, seed=step))
    path = str(tmp_path / "ckpt.weights.h5")
    model.save_weights(path)
    fresh = make_tiny_model(k_max=2)
    fresh.load_weights(path)
    assert int(fresh.optimizer.iterations) == 3 and int(fresh.mask_optimizer.iterations) == 3
    for a, b in zip(_values(model.optimizer.variables), _values(fresh.optimizer.variables)):
        np.testing.assert_array_equal(a, b)
    assert fresh.num_learners == 2


def _mask_rows(model):
    return keras.ops.convert_to_numpy(model.masks.masks).copy()


def test_after_k_doubles_a_step_on_learner_1_moves_mask_1_only(make_tiny_model):
    # Regression: the reset used to zero the mask learning rate too, and no
    # mask moved again after the first doubling.
    model = make_tiny_model(k_max=2, mask_loss_weight=0.0, loss=TripletLoss(margin=0.5, mining="batch_all"))
    lr_before = float(keras.ops.convert_to_numpy(model.mask_optimizer.learning_rate))
    for step in range(2):
        model.train_step(_batch(cluster=0, seed=step))
    model.masks.grow()
    model.reset_mask_optimizer()
    assert float(keras.ops.convert_to_numpy(model.mask_optimizer.learning_rate)) == lr_before
    before = _mask_rows(model)
    np.testing.assert_array_equal(before[0], before[1])  # children start as copies
    model.train_step(_batch(cluster=1, seed=5))
    after = _mask_rows(model)
    np.testing.assert_array_equal(after[0], before[0])  # learner 0 had no batch, fresh moments
    assert np.abs(after[1] - before[1]).max() > 0


def test_children_masks_drift_apart_after_growth(make_tiny_model):
    model = make_tiny_model(k_max=2, loss=TripletLoss(margin=0.5, mining="batch_all"))
    model.masks.grow()
    model.reset_mask_optimizer()
    for step in range(6):
        # Each learner sees its own data: different images per cluster.
        model.train_step(_batch(cluster=step % 2, seed=10 * (step % 2) + step))
    masks = model.masks.mask_values()
    assert np.abs(masks[0] - masks[1]).max() > 1e-4


def test_reset_restarts_adam_like_a_new_parameter_group(make_tiny_model):
    # The reference adds the grown masks as a new torch param group: zero
    # moments, step 0, same lr. The first step after the reset must then
    # equal a fresh optimizer's first step.
    model = make_tiny_model(k_max=2, mask_loss_weight=0.0)
    for step in range(3):
        model.train_step(_batch(cluster=0, seed=step))
    model.reset_mask_optimizer()
    assert int(model.mask_optimizer.iterations) == 0
    fresh = keras.optimizers.Adam(model.mask_learning_rate)
    mask = model.masks.masks
    shadow = keras.Variable(keras.ops.convert_to_numpy(mask))
    fresh.build([shadow])
    grad = np.random.default_rng(0).normal(size=mask.shape).astype("float32")
    model.mask_optimizer.apply([tf.constant(grad)], [mask])
    fresh.apply([tf.constant(grad)], [shadow])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(mask), keras.ops.convert_to_numpy(shadow), rtol=1e-6)


def test_coupled_weight_decay_changes_the_step_and_shrinks_masks(make_tiny_model):
    # torch Adam(weight_decay=wd) steps on g + wd * w: the same loss gradient
    # plus the decay gives another step, and masks (all 1 at the start) are
    # pulled down by it.
    decay = 1e-2
    # A loss without random sampling, so both models take the same loss gradient.
    model = make_tiny_model(k_max=2, weight_decay=decay, mask_weight_decay=decay, lr=1e-3,
                            loss=TripletLoss(margin=0.5, mining="batch_all"))
    plain = make_tiny_model(k_max=2, lr=1e-3, loss=TripletLoss(margin=0.5, mining="batch_all"))
    plain.set_weights(model.get_weights())
    data = _batch(cluster=0)
    model.train_step(data)
    plain.train_step(data)
    moved = model.head.kernel.numpy() - plain.head.kernel.numpy()
    assert np.abs(moved).max() > 0  # the decay changed the step
    # Masks start at 1: a decayed mask gradient pulls them below the undecayed ones.
    assert (_mask_rows(model)[0] <= _mask_rows(plain)[0] + 1e-7).all()
    assert _mask_rows(model)[0].mean() < _mask_rows(plain)[0].mean()


def test_learnable_beta_has_its_own_learning_rate(make_tiny_model):
    slow = make_tiny_model(loss=MarginLoss(learnable_beta=True, num_classes=4), loss_learning_rate=1e-4)
    fast = make_tiny_model(loss=MarginLoss(learnable_beta=True, num_classes=4), loss_learning_rate=1e-1)
    fast.set_weights(slow.get_weights())
    moves = []
    for model in (slow, fast):
        beta = model.loss_variables()[0]
        before = keras.ops.convert_to_numpy(beta).copy()
        model.train_step(_batch(cluster=0))
        moves.append(np.abs(keras.ops.convert_to_numpy(beta) - before).max())
    assert moves[0] > 0 and moves[1] > 100 * moves[0]
    assert not any(id(v) in {id(b) for b in slow.loss_variables()} for v in slow.network_variables())


def test_fixed_masks_full_embedding_concatenates_normalised_blocks(make_tiny_model):
    model = make_tiny_model(embedding_dim=8, k_max=2, mask_mode="fixed")
    model.masks.set_num_active(2)
    x, _ = _batch(0)
    z = model.embedder(x["images"]).numpy()
    blocks = [z[:, :4], z[:, 4:]]
    expected = np.concatenate([b / np.linalg.norm(b, axis=1, keepdims=True) for b in blocks], axis=1) / np.sqrt(2)
    np.testing.assert_allclose(model(x["images"]).numpy(), expected, atol=1e-5)


def test_compile_with_a_keras_loss_is_refused_naming_it(make_tiny_model):
    model = make_tiny_model()
    with pytest.raises(TypeError, match="'mse'.*MetricLoss|MetricLoss.*'mse'"):
        model.compile(optimizer="adam", loss="mse")
    with pytest.raises(TypeError, match="MeanSquaredError"):
        model.compile(optimizer="adam", loss=keras.losses.MeanSquaredError())


def test_the_loss_given_to_compile_trains_and_round_trips_through_save(tmp_path):
    from tfdnc.backbones import build_backbone
    from tfdnc.losses import ProxyAnchorLoss

    model = DivideAndConquerModel(build_backbone("small_cnn", (16, 16, 1), width=8), embedding_dim=16, k_max=4)
    loss = ProxyAnchorLoss(num_classes=4, embedding_dim=16, num_learners=4, alpha=16.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
    assert model.metric_loss is loss
    proxies = loss.trainable_variables
    assert proxies and all(id(p) not in {id(v) for v in model.network_variables()} for p in proxies)
    before = [keras.ops.convert_to_numpy(p).copy() for p in proxies]
    model.train_step(_batch(cluster=0))
    trained = [keras.ops.convert_to_numpy(p).copy() for p in proxies]
    assert any(np.abs(t - b).max() > 0 for t, b in zip(trained, before))  # the loss's variables are optimised
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.metric_loss) is ProxyAnchorLoss
    assert loaded.metric_loss.get_config() == loss.get_config()
    for got, want in zip(loaded.metric_loss.trainable_variables, trained):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want)
    x, _ = _batch(0, seed=3)
    np.testing.assert_allclose(loaded(x["images"]).numpy(), model(x["images"]).numpy(), atol=1e-6)
    loaded.train_step(_batch(cluster=1))  # compiled: it trains on


def test_the_constructor_loss_is_deprecated_but_still_used():
    from tfdnc.backbones import build_backbone

    with pytest.warns(DeprecationWarning, match="compile"):
        model = DivideAndConquerModel(build_backbone("small_cnn", (16, 16, 1), width=8), embedding_dim=16,
                                      k_max=2, loss=TripletLoss())
    assert isinstance(model.metric_loss, TripletLoss)


class _LearnerAwareTriplet(TripletLoss):
    """A triplet loss recording what it is told: learner, training, cluster changes (the losses' contract)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.learners = []
        self.cluster_changes = 0

    def compute_loss_and_stats(self, labels, embeddings, learner=None, training=True):
        self.learners.append((None if learner is None else int(learner), training))
        return super().compute_loss_and_stats(labels, embeddings)

    def on_clusters_changed(self):
        self.cluster_changes += 1


def test_loss_is_told_the_batch_learner_and_cluster_changes(make_tiny_model):
    loss = _LearnerAwareTriplet(margin=0.5, mining="batch_all")
    model = make_tiny_model(k_max=4, loss=loss)
    model.masks.set_num_active(4)
    x, y = _batch(cluster=3)
    model.train_step((x, y))  # eager: the loss sees the concrete cluster id
    model.full_embedding = True
    model.train_step((x, y))
    model.test_step((x, y))
    assert loss.learners == [(3, True), (None, True), (None, False)]
    model.on_clusters_changed()
    assert loss.cluster_changes == 1
    # A loss without the hook: nothing to tell, no error.
    make_tiny_model(k_max=2, loss=TripletLoss()).on_clusters_changed()


def test_one_learner_keeps_its_loss_state_in_the_full_embedding_phase(make_tiny_model):
    # With k_final = 1 the full embedding is learner 0's: a Proxy-Anchor /
    # XBM loss must keep training learner 0's proxies / memory, not switch
    # to the never-trained full-embedding slot (which cost Proxy-Anchor 13
    # points of R@1 at K = 1 in docs/bench/losses.md).
    loss = _LearnerAwareTriplet(margin=0.5, mining="batch_all")
    model = make_tiny_model(k_max=1, loss=loss)
    x, y = _batch(cluster=0)
    model.full_embedding = True
    model.train_step((x, y))
    model.test_step((x, y))
    assert loss.learners == [(0, True), (None, False)]


def test_xbm_and_proxy_anchor_settings_reach_the_loss():
    from tfdnc.config import TrainConfig
    from tfdnc.losses import CrossBatchMemory, ProxyAnchorLoss, loss_from_config

    config = TrainConfig(loss="margin", symmetrical=False, xbm_size=64, xbm_start_step=5, xbm_batch_loss=True,
                         embedding_dim=16, k_final=2)
    loss = loss_from_config(config.loss_config, num_classes=10, embedding_dim=config.embedding_dim, num_learners=config.k_final)
    assert isinstance(loss, CrossBatchMemory)
    assert (loss.memory_size, loss.start_step, loss.batch_loss, loss.num_learners) == (64, 5, True, 2)
    config = TrainConfig(loss="proxy_anchor", symmetrical=False, embedding_dim=16, k_final=4)
    loss = loss_from_config(config.loss_config, num_classes=10, embedding_dim=config.embedding_dim, num_learners=config.k_final)
    assert isinstance(loss, ProxyAnchorLoss)
    assert (loss.num_classes, loss.embedding_dim, loss.num_learners) == (10, 16, 4)
    with pytest.raises(ValueError, match="--xbm-size"):
        TrainConfig(loss="margin", symmetrical=True, xbm_size=64)
    with pytest.raises(ValueError, match="--xbm-start-step"):
        TrainConfig(loss="margin", symmetrical=False, xbm_start_step=-1)


def test_compile_takes_a_tfdnc_loss_by_name(make_tiny_model):
    from tfdnc.losses import MultiSimilarityLoss

    model = make_tiny_model()
    model.compile(optimizer="adam", loss="multi-similarity")
    assert isinstance(model.metric_loss, MultiSimilarityLoss)
    assert np.isfinite(float(model.train_step(_batch(cluster=0))["loss"]))
