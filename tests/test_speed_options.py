"""Speed options: the train step under XLA and under mixed precision matches the plain float32 step."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tfdnc.backbones import build_backbone
from tfdnc.losses import get_loss
from tfdnc.model import DivideAndConquerModel

SIZE = 12


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, size=(16, SIZE, SIZE, 1)).astype("float32")
    labels = np.repeat(np.arange(4), 4).astype("int32")
    return {"images": images, "cluster": np.ones(16, "int32")}, labels


def _model(optimizer, jit_compile=False):
    keras.utils.set_random_seed(7)
    backbone = build_backbone("small_cnn", (SIZE, SIZE, 1), width=4)
    # A loss without random sampling (the margin loss samples negatives, and
    # XLA draws other random numbers), so the steps are comparable.
    model = DivideAndConquerModel(backbone, embedding_dim=8, k_max=2, mask_learning_rate=0.1,
                                  loss=get_loss("contrastive"))
    model.masks.set_num_active(2)
    # Distinct masks, so both the metric and the orthogonality loss move them.
    model.masks.masks.assign(np.random.default_rng(1).uniform(0.5, 1.5, size=(2, 8)).astype("float32"))
    model.compile(optimizer=optimizer, jit_compile=jit_compile)
    return model


def _step(model):
    x, y = _batch()
    before = [np.asarray(v, dtype=np.float64) for v in model.trainable_weights]
    logs = model.train_on_batch(x, y, return_dict=True)
    after = [np.asarray(v, dtype=np.float64) for v in model.trainable_weights]
    return logs, [a - b for a, b in zip(after, before)]


def _relative(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


def test_train_step_compiles_with_xla_on_cpu_and_matches():
    reference_logs, reference = _step(_model(keras.optimizers.SGD(0.05)))
    model = _model(keras.optimizers.SGD(0.05), jit_compile=True)
    # Keras turns jit_compile off for models it thinks XLA cannot compile.
    assert model.jit_compile is True
    logs, deltas = _step(model)
    np.testing.assert_allclose(logs["loss"], reference_logs["loss"], rtol=1e-4)
    for d, r in zip(deltas, reference):
        assert _relative(d, r) < 1e-3


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_step_matches_float32(policy):
    reference_logs, reference = _step(_model(keras.optimizers.SGD(0.05)))
    names = [v.path for v in _model(keras.optimizers.SGD(0.05)).trainable_weights]
    keras.mixed_precision.set_global_policy(policy)
    try:
        if policy == "mixed_float16":
            # Growth every step: the scale doubles inside this step's apply(),
            # so the mask gradients must be unscaled with the scale read before.
            optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.05), dynamic_growth_steps=1)
        else:
            optimizer = keras.optimizers.SGD(0.05)
        model = _model(optimizer)
        logs, deltas = _step(model)
        if policy == "mixed_float16":
            assert float(model.optimizer.dynamic_scale) == 2.0 * 32768.0
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # Half-precision round-off on random images (bfloat16 keeps 8 bits of
    # mantissa); a gradient left scaled or unscaled twice is off by a factor
    # of 2 to 65536 instead.
    loose = 0.25 if policy == "mixed_float16" else 0.4
    np.testing.assert_allclose(logs["loss"], reference_logs["loss"], rtol=0.05)
    for name, d, r in zip(names, deltas, reference):
        assert _relative(d, r) < loose, (name, _relative(d, r))
    # The masks learn in float32 from the float32 loss: their step is close.
    mask_index = names.index(next(n for n in names if "subspace_masks" in n))
    assert np.abs(reference[mask_index]).max() > 1e-4
    assert _relative(deltas[mask_index], reference[mask_index]) < 0.1
