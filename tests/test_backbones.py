"""Backbone BatchNorm: frozen statistics with trainable gamma/beta, momentum / epsilon."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfdnc.backbones import (
    SMALL_CNN_BATCHNORM_EPSILON,
    SMALL_CNN_BATCHNORM_MOMENTUM,
    BatchNormalization,
    batchnorm_layers,
    build_backbone,
    set_batchnorm_frozen,
    set_batchnorm_options,
    with_frozen_batchnorm,
)

# (name, input shape, extra build_backbone options); mobilenetv2 at 32x32 is
# the smallest keras.applications trunk that still builds quickly.
SMALL = ("small_cnn", (16, 16, 1), {"width": 4})
MOBILENET = ("mobilenetv2", (32, 32, 3), {})


def images(shape, n=6, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(n, *shape)).astype(np.float32)


def bn_state(model):
    return [
        {
            "gamma": layer.gamma.numpy().copy(),
            "beta": layer.beta.numpy().copy(),
            "mean": layer.moving_mean.numpy().copy(),
            "var": layer.moving_variance.numpy().copy(),
        }
        for layer in batchnorm_layers(model)
    ]


def train_step(model, x, lr=0.5):
    """One SGD step on a random linear read-out of the features, in training mode."""
    direction = tf.constant(
        np.random.default_rng(1).normal(size=(model.output_shape[-1],)), tf.float32
    )
    with tf.GradientTape() as tape:
        features = model(x, training=True)
        loss = tf.reduce_mean(tf.linalg.matvec(features, direction)) + tf.reduce_mean(features**2)
    grads = tape.gradient(loss, model.trainable_variables)
    keras.optimizers.SGD(lr).apply(grads, model.trainable_variables)


@pytest.fixture(scope="module", params=[SMALL, MOBILENET], ids=["small_cnn", "mobilenetv2"])
def frozen(request):
    name, shape, options = request.param
    model = build_backbone(name, shape, freeze_batchnorm=True, batchnorm_momentum=0.0, **options)
    # Statistics of the images instead of the initial (0, 1), as pretrained
    # weights would have: MobileNetV2's ReLU6 would otherwise saturate and
    # stop the gradient of some gammas.
    set_batchnorm_frozen(model, False)
    model(images(shape, seed=5), training=True)
    set_batchnorm_frozen(model, True)
    return model, shape


def test_frozen_batchnorm_keeps_statistics_and_trains_gamma_beta(frozen):
    model, shape = frozen
    layers = batchnorm_layers(model)
    assert layers and all(isinstance(layer, BatchNormalization) for layer in layers)
    assert all(layer.trainable and layer.freeze_statistics for layer in layers)
    trainable = {id(v) for v in model.trainable_variables}
    assert all(id(layer.gamma) in trainable and id(layer.beta) in trainable for layer in layers)
    x = images(shape)
    # Training mode normalises with the moving statistics, as inference does.
    np.testing.assert_array_equal(model(x, training=True).numpy(), model(x, training=False).numpy())
    before = bn_state(model)
    train_step(model, x)
    after = bn_state(model)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a["mean"], b["mean"])
        np.testing.assert_array_equal(a["var"], b["var"])
    assert all(np.any(a["gamma"] != b["gamma"]) for b, a in zip(before, after))
    assert all(np.any(a["beta"] != b["beta"]) for b, a in zip(before, after))


def test_frozen_batchnorm_in_keras_fit():
    name, shape, options = SMALL
    model = build_backbone(name, shape, freeze_batchnorm=True, **options)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    x = images(shape, n=8)
    y = np.ones((8, model.output_shape[-1]), np.float32)
    before = bn_state(model)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for b, a in zip(before, bn_state(model)):
        np.testing.assert_array_equal(a["mean"], b["mean"])
        np.testing.assert_array_equal(a["var"], b["var"])
        assert np.any(a["gamma"] != b["gamma"])


def test_plain_batchnorm_still_updates_statistics():
    name, shape, options = SMALL
    model = build_backbone(name, shape, **options)
    assert not any(getattr(layer, "freeze_statistics", False) for layer in batchnorm_layers(model))
    x = images(shape)
    assert not np.allclose(model(x, training=True).numpy(), model(x, training=False).numpy())
    before = bn_state(model)
    train_step(model, x)
    for b, a in zip(before, bn_state(model)):
        assert np.any(a["mean"] != b["mean"]) and np.any(a["var"] != b["var"])


def test_freezing_copies_weights_and_configuration():
    name, shape, options = SMALL
    plain = build_backbone(name, shape, batchnorm_momentum=0.8, **options)
    x = images(shape)
    plain(x, training=True)  # moving statistics away from their initial values
    frozen = with_frozen_batchnorm(plain)
    assert frozen.name == plain.name == "backbone"
    np.testing.assert_allclose(frozen(x).numpy(), plain(x).numpy(), rtol=1e-6, atol=1e-6)
    assert [layer.name for layer in batchnorm_layers(frozen)] == [
        layer.name for layer in batchnorm_layers(plain)
    ]
    assert all(layer.momentum == 0.8 for layer in batchnorm_layers(frozen))


def test_frozen_backbone_round_trips_through_keras_file_and_saved_model(tmp_path):
    name, shape, options = SMALL
    model = build_backbone(name, shape, freeze_batchnorm=True, **options)
    x = images(shape)
    train_step(model, x)  # gamma / beta away from their initial values
    expected = model(x).numpy()
    model.save(tmp_path / "backbone.keras")
    loaded = keras.saving.load_model(tmp_path / "backbone.keras")
    layers = batchnorm_layers(loaded)
    assert all(isinstance(layer, BatchNormalization) and layer.freeze_statistics for layer in layers)
    np.testing.assert_array_equal(loaded(x).numpy(), expected)
    np.testing.assert_array_equal(loaded(x, training=True).numpy(), expected)
    model.export(str(tmp_path / "saved_model"), format="tf_saved_model", verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved_model"))
    np.testing.assert_allclose(served.serve(tf.constant(x)).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_weight_files_load_across_frozen_and_plain_backbones(tmp_path):
    name, shape, options = SMALL
    x = images(shape)
    frozen = build_backbone(name, shape, freeze_batchnorm=True, **options)
    train_step(frozen, x)
    frozen.save_weights(tmp_path / "frozen.weights.h5")
    plain = build_backbone(name, shape, weights=tmp_path / "frozen.weights.h5", **options)
    np.testing.assert_array_equal(plain(x).numpy(), frozen(x).numpy())
    plain(x, training=True)
    plain.save_weights(tmp_path / "plain.weights.h5")
    refrozen = build_backbone(
        name, shape, weights=tmp_path / "plain.weights.h5", freeze_batchnorm=True, **options
    )
    np.testing.assert_array_equal(refrozen(x).numpy(), plain(x).numpy())


def test_weight_files_written_with_keras_batchnorm_load_into_the_small_cnn(tmp_path):
    """Weight files saved before the small CNN's layers became tfdnc's BatchNormalization (Keras's own
    layer, same variables) load into today's small CNN and give the same embedding."""
    from tfdnc.backbones import BatchNormalization

    name, shape, options = SMALL
    x = images(shape)
    today = build_backbone(name, shape, **options)
    train_step(today, x)  # moving statistics and gamma/beta away from their initial values

    def as_keras(layer):
        if isinstance(layer, BatchNormalization):
            config = {k: v for k, v in layer.get_config().items() if k != "freeze_statistics"}
            return keras.layers.BatchNormalization.from_config(config)
        return layer.__class__.from_config(layer.get_config())

    before = keras.models.clone_model(today, clone_function=as_keras)
    assert not any(isinstance(layer, BatchNormalization) for layer in before.layers)
    before.set_weights([w + 0.01 for w in today.get_weights()])
    before.save_weights(tmp_path / "before.weights.h5")
    loaded = build_backbone(name, shape, weights=tmp_path / "before.weights.h5", **options)
    np.testing.assert_allclose(loaded(x).numpy(), before(x).numpy(), atol=1e-5)


def test_set_batchnorm_frozen_toggles_in_place_and_refuses_plain_layers():
    name, shape, options = SMALL
    model = build_backbone(name, shape, freeze_batchnorm=True, **options)
    x = images(shape)
    assert set_batchnorm_frozen(model, False) == 4
    before = bn_state(model)
    model(x, training=True)
    assert all(np.any(a["mean"] != b["mean"]) for b, a in zip(before, bn_state(model)))
    assert set_batchnorm_frozen(model, True) == 4
    assert model.get_config() is not None
    assert all(layer.get_config()["freeze_statistics"] for layer in batchnorm_layers(model))
    # the small CNN's own layers (tfdnc's, for the fused kernel) freeze in place; Keras's refuse
    assert set_batchnorm_frozen(build_backbone(name, shape, **options), True) == 4
    plain = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.BatchNormalization()])
    with pytest.raises(ValueError, match="with_frozen_batchnorm"):
        set_batchnorm_frozen(plain, True)


# --- momentum / epsilon -----------------------------------------------------------


def test_small_cnn_uses_torch_batchnorm_defaults_and_explicit_values():
    name, shape, options = SMALL
    layers = batchnorm_layers(build_backbone(name, shape, **options))
    assert len(layers) == 4
    assert SMALL_CNN_BATCHNORM_MOMENTUM == 0.9 and SMALL_CNN_BATCHNORM_EPSILON == 1e-5
    assert all(layer.momentum == 0.9 and layer.epsilon == 1e-5 for layer in layers)
    model = build_backbone(
        name, shape, batchnorm_momentum=0.5, batchnorm_epsilon=1e-3, freeze_batchnorm=True, **options
    )
    assert all(layer.momentum == 0.5 and layer.epsilon == 1e-3 for layer in batchnorm_layers(model))


def test_applications_keep_their_batchnorm_unless_told():
    name, shape, options = MOBILENET
    default = batchnorm_layers(build_backbone(name, shape, **options))
    reference = [
        layer
        for layer in keras.applications.MobileNetV2(
            include_top=False, weights=None, input_shape=shape
        ).layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(default) == len(reference) > 10
    assert [(l.momentum, l.epsilon) for l in default] == [(l.momentum, l.epsilon) for l in reference]
    chosen = batchnorm_layers(
        build_backbone(name, shape, batchnorm_momentum=0.9, batchnorm_epsilon=1e-5, **options)
    )
    assert len(chosen) == len(reference)
    assert all(layer.momentum == 0.9 and layer.epsilon == 1e-5 for layer in chosen)


def test_momentum_sets_how_far_the_moving_mean_moves():
    name, shape, options = SMALL
    slow = build_backbone(name, shape, batchnorm_momentum=0.99, **options)
    fast = build_backbone(name, shape, batchnorm_momentum=0.9, **options)
    fast.set_weights(slow.get_weights())
    x = images(shape)
    steps = []
    for model in (slow, fast):
        before = bn_state(model)
        train_step(model, x)
        steps.append([a["mean"] - b["mean"] for b, a in zip(before, bn_state(model))])
    for slow_step, fast_step in zip(*steps):
        assert np.abs(slow_step).max() > 0
        np.testing.assert_allclose(fast_step, 10.0 * slow_step, rtol=1e-3, atol=1e-6)


def test_batchnorm_settings_are_validated():
    name, shape, options = SMALL
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="batchnorm_momentum"):
            build_backbone(name, shape, batchnorm_momentum=bad, **options)
    for bad in (0.0, -1e-5):
        with pytest.raises(ValueError, match="batchnorm_epsilon"):
            build_backbone(name, shape, batchnorm_epsilon=bad, **options)
    with pytest.raises(ValueError, match="batchnorm_momentum"):
        set_batchnorm_options(build_backbone(name, shape, **options), momentum=1.5)


def test_fused_training_batchnorm_matches_keras_batchnorm():
    """tfdnc's BatchNormalization trains through TensorFlow's fused kernel (the small CNN's speed,
    docs/bench/suite.md "Speed"): outputs, moving statistics and gradients as Keras's own layer."""
    import numpy as np
    import tensorflow as tf

    from tfdnc.backbones import BatchNormalization

    x = tf.random.stateless_normal((8, 5, 5, 6), seed=(1, 2)) * 3.0 + 1.0
    ref = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    fused = BatchNormalization(freeze_statistics=False, momentum=0.9, epsilon=1e-5)
    ref.build(x.shape)
    fused.build(x.shape)
    start = [w + 0.1 * (i + 1) for i, w in enumerate(ref.get_weights())]  # gamma, beta, mean, variance != defaults
    ref.set_weights(start)
    fused.set_weights(start)
    readout = tf.range(6, dtype=tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        a, b = ref(x, training=True), fused(x, training=True)
        loss_a, loss_b = tf.reduce_sum(a * readout), tf.reduce_sum(b * readout)
    np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5)
    for got, want in zip(fused.get_weights(), ref.get_weights()):  # moving statistics updated alike
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(fused.get_weights()[2], start[2])  # ... and they did move
    np.testing.assert_allclose(tape.gradient(loss_b, x).numpy(), tape.gradient(loss_a, x).numpy(), atol=1e-4)
    for v_b, v_a in ((fused.gamma, ref.gamma), (fused.beta, ref.beta)):
        np.testing.assert_allclose(tape.gradient(loss_b, v_b).numpy(), tape.gradient(loss_a, v_a).numpy(),
                                   rtol=1e-4, atol=1e-3)
    # inference and frozen statistics take Keras's own path: equal too
    np.testing.assert_allclose(fused(x, training=False).numpy(), ref(x, training=False).numpy(), atol=1e-5)


def test_a_saved_model_loads_with_keras_load_model_once_the_model_class_is_imported(tmp_path):
    """`keras.saving.load_model` in a fresh process that has touched only `tfdnc.DivideAndConquerModel`
    finds what a trained model is saved with: the small CNN's own BatchNormalization layer and the
    learning-rate schedule of its optimizer; the embeddings are the same."""
    import subprocess
    import sys

    from tfdnc.model import DivideAndConquerModel
    from tfdnc.training.lr import WarmupDecay

    name, shape, options = SMALL
    model = DivideAndConquerModel(build_backbone(name, shape, **options), embedding_dim=8, k_final=2)
    # compiled as `tfdnc train` compiles it: Adam on the warm-up + cosine schedule
    model.compile(optimizer=keras.optimizers.Adam(WarmupDecay(1e-3, total_steps=10, warmup_steps=2, decay="cosine")))
    x = images(shape)
    expected = model(x, training=False).numpy()
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x)
    code = (
        "import keras, numpy as np, tfdnc\n"
        "tfdnc.DivideAndConquerModel\n"
        f"model = keras.saving.load_model({str(tmp_path / 'model.keras')!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, model(x, training=False).numpy())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-5)
