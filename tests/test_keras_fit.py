"""`model.fit` on what Keras users pass: arrays, (image, label) datasets, ClusterBatches; clear refusals."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

SIZE = 16


class Interrupted(Exception):
    """Stands for a crash in the middle of fit."""


def squares(classes=8, per_class=8, seed=0):
    """Class c: a square of colour c at position c on dark noise (grey images would not need colour)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (classes * per_class, SIZE, SIZE, 3)).astype(np.uint8)
    y = np.repeat(np.arange(classes), per_class)
    for i, c in enumerate(y):
        colour = np.array([(c * 97) % 256, (c * 53 + 80) % 256, (c * 29 + 160) % 256], np.uint8)
        px, py = (c % 4) * 3 + rng.integers(0, 2), (c // 4) * 6 + rng.integers(0, 2)
        x[i, py:py + 7, px:px + 7] = colour
    return x, y


def squares_on_colour(classes=8, per_class=12, seed=0, side=6):
    """Class c: a square of colour c at a random place on a random-colour background.

    The background dominates an untrained network's features (Recall@1 near
    chance); training has to learn to look at the square.
    """
    colours = np.random.default_rng(123).integers(0, 256, (classes, 3))
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), per_class)
    x = np.ones((len(y), SIZE, SIZE, 3)) * rng.integers(0, 256, (len(y), 1, 1, 3))
    x += rng.normal(0, 10, x.shape)
    for i, c in enumerate(y):
        p, q = rng.integers(3, SIZE - side - 3, 2)
        x[i, p:p + side, q:q + side] = colours[c]
    return np.clip(x, 0, 255).astype(np.float32), y


def make_model(k_final=2, loss=True, seed=0):
    import keras

    import tfdnc

    keras.utils.set_random_seed(seed)
    model = tfdnc.DivideAndConquerModel(tfdnc.build_backbone("small_cnn", (SIZE, SIZE, 3), width=8),
                                        embedding_dim=16, k_final=k_final)
    if loss:
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=tfdnc.losses.MultiSimilarityLoss())
    else:
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def recall_at_1(model, x, y) -> float:
    from tfdnc.evaluation.metrics import recall_at_k

    return recall_at_k(model.predict(x, verbose=0), y, (1,))[1]


def test_fit_on_arrays_raises_recall_at_1_over_the_untrained_model():
    x, y = squares_on_colour(seed=0)
    x_test, y_test = squares_on_colour(per_class=6, seed=1)  # other images of the same classes
    model = make_model(k_final=2)
    before = recall_at_1(model, x_test, y_test)
    history = model.fit(x, y, epochs=8, batch_size=16, verbose=0)
    after = recall_at_1(model, x_test, y_test)
    # Measured 0.21 -> 0.60.
    assert after > before + 0.2, (before, after)
    assert history.history["K"][-1] == 2.0 and model.num_learners == 2


def test_fit_grows_k_to_k_final_with_the_default_and_a_given_recluster_period():
    x, y = squares(classes=8, per_class=6)
    model = make_model(k_final=4)
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0)  # T = 3 // 3 = 1
    assert history.history["K"] == [1.0, 2.0, 4.0]
    assert model.num_learners == 4
    model = make_model(k_final=4)
    history = model.fit(x, y, epochs=4, batch_size=16, recluster_every=2, verbose=0)
    assert history.history["K"] == [1.0, 1.0, 2.0, 2.0]


def test_fit_takes_batched_and_unbatched_datasets_validation_data_and_compile_without_a_loss():
    import tensorflow as tf

    x, y = squares(classes=6, per_class=6)
    model = make_model(k_final=2, loss=False)  # the documented default: MarginLoss
    assert type(model.metric_loss).__name__ == "MarginLoss"
    unbatched = tf.data.Dataset.from_tensor_slices((x.astype("float32"), y))
    one_hot = tf.data.Dataset.from_tensor_slices((x, tf.one_hot(y, 6))).batch(7)
    history = model.fit(unbatched, epochs=2, batch_size=8, validation_data=unbatched, verbose=0)
    assert {"loss", "val_loss", "K"} <= set(history.history)
    assert len(history.history["val_loss"]) == 2
    history = model.fit(one_hot, epochs=3, initial_epoch=1, batch_size=8, verbose=0,
                        validation_data=(x, y))
    assert len(history.history["loss"]) == 2  # epochs 1 and 2, as Keras counts them


def test_fit_validation_split_holds_out_the_last_images_as_keras_does():
    x, y = squares(classes=6, per_class=6)
    seen = []

    import keras

    class Count(keras.callbacks.Callback):
        def on_test_batch_begin(self, batch, logs=None):
            seen.append(batch)

    model = make_model(k_final=1)
    history = model.fit(x, y, epochs=1, batch_size=8, validation_split=0.25, callbacks=[Count()], verbose=0)
    assert "val_loss" in history.history
    assert len(seen) == 2  # 9 held-out images in batches of 8


def test_inputs_fit_cannot_use_get_one_line_naming_what_to_pass():
    import tensorflow as tf

    x, y = squares(classes=4, per_class=4)
    model = make_model(k_final=1)
    cases = [
        (dict(x=tf.data.Dataset.from_tensor_slices((x, y)).repeat()), "infinite"),
        (dict(x=tf.data.Dataset.from_tensor_slices(x)), "labels"),
        (dict(x=x), "`y`"),
        (dict(x=x, y=np.zeros(len(x), int)), "1 class"),
        (dict(x=x, y=y, sample_weight=np.ones(len(x))), "sample_weight"),
    ]
    for kwargs, words in cases:
        with pytest.raises(ValueError, match=words) as raised:
            model.fit(**kwargs, epochs=1, verbose=0)
        assert "\n" not in str(raised.value)
    with pytest.raises(ValueError, match=r"k_final<=1"):
        make_model(k_final=4).fit(x[:8], y[:8], epochs=1, batch_size=8, verbose=0)


def test_cluster_batches_without_their_schedule_fail_at_once_naming_it():
    from tfdnc.data import ClusterBatches

    x, y = squares(classes=4, per_class=4)
    batches = ClusterBatches((x, y), classes_per_batch=2, images_per_class=2)
    model = make_model(k_final=1)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="DivideAndConquerSchedule") as raised:
        model.fit(batches.dataset(), steps_per_epoch=batches.steps_per_epoch, epochs=1, verbose=0)
    assert time.perf_counter() - start < 60  # not after the pipeline's 120 s wait
    assert "model.fit(batches" in str(raised.value)
    history = model.fit(batches, epochs=2, verbose=0)  # the model adds the schedule itself
    assert len(history.history["loss"]) == 2


def test_backup_and_restore_resumes_an_interrupted_fit_with_its_clusters(tmp_path):
    import keras

    x, y = squares(classes=8, per_class=6)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise Interrupted

    backup = str(tmp_path / "backup")
    model = make_model(k_final=4)
    with pytest.raises(Interrupted):
        model.fit(x, y, epochs=4, batch_size=16, recluster_every=1, verbose=0,
                  callbacks=[keras.callbacks.BackupAndRestore(backup), Interrupt()])
    assert os.path.isdir(os.path.join(backup, "tfdnc_clusters"))
    fresh = make_model(k_final=4, seed=1)
    history = fresh.fit(x, y, epochs=4, batch_size=16, recluster_every=1, verbose=0,
                        callbacks=[keras.callbacks.BackupAndRestore(backup)])
    # Epochs 2 and 3 ran, starting from the K = 4 the interrupted fit had reached.
    assert history.history["K"] == [4.0, 4.0]
    assert fresh.num_learners == 4
