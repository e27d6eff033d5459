"""SubspaceMasks: learner embeddings, mask loss, growth, serialisation."""

import keras
import numpy as np
import pytest

from tfdnc.layers.masks import SubspaceMasks, block_masks
from tfdnc.layers.normalization import L2Normalize


def _normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def test_fixed_mask_learner_is_its_normalised_block():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 12)).astype("float32")
    layer = SubspaceMasks(12, k_max=4, mode="fixed", initial_k=4)
    for k in range(4):
        out = keras.ops.convert_to_numpy(layer(z, cluster=k))
        expected = np.zeros_like(z)
        expected[:, 3 * k : 3 * k + 3] = _normalize(z[:, 3 * k : 3 * k + 3])
        np.testing.assert_allclose(out, expected, atol=1e-6)


def test_learnable_mask_uses_relu_of_mask_and_unit_norm():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(6, 10)).astype("float32")
    layer = SubspaceMasks(10, k_max=4, mode="learnable", initial_k=4)
    masks = rng.normal(size=(4, 10)).astype("float32")
    layer.masks.assign(masks)
    out = keras.ops.convert_to_numpy(layer(z, cluster=2))
    np.testing.assert_allclose(out, _normalize(z * np.maximum(masks[2], 0)), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    all_out = keras.ops.convert_to_numpy(layer.all_learners(z))
    np.testing.assert_allclose(all_out[:, 2], out, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_orthogonality_loss_matches_numpy(k):
    rng = np.random.default_rng(k)
    layer = SubspaceMasks(7, k_max=5, mode="learnable", initial_k=k)
    masks = rng.normal(size=(5, 7)).astype("float32")
    layer.masks.assign(masks)
    relu = _normalize(np.maximum(masks[:k], 0))
    total = sum(relu[i] @ relu[j] for i in range(k) for j in range(k) if i != j)
    expected = total / (k * (k - 1)) if k > 1 else 0.0
    got = float(keras.ops.convert_to_numpy(layer.orthogonality_loss()))
    assert got == pytest.approx(expected, abs=1e-5)


def test_orthogonality_loss_is_one_for_identical_masks_and_zero_for_disjoint():
    layer = SubspaceMasks(8, k_max=4, mode="learnable", initial_k=4)
    assert float(keras.ops.convert_to_numpy(layer.orthogonality_loss())) == pytest.approx(1.0, abs=1e-6)
    layer.masks.assign(block_masks(8, 4))
    assert float(keras.ops.convert_to_numpy(layer.orthogonality_loss())) == pytest.approx(0.0, abs=1e-6)


def test_learnable_grow_copies_parent_into_both_children():
    rng = np.random.default_rng(2)
    layer = SubspaceMasks(6, k_max=8, mode="learnable", initial_k=2)
    values = rng.normal(size=(8, 6)).astype("float32")
    layer.masks.assign(values)
    assert layer.grow() == 4
    grown = keras.ops.convert_to_numpy(layer.masks)
    for parent in range(2):
        np.testing.assert_array_equal(grown[2 * parent], values[parent])
        np.testing.assert_array_equal(grown[2 * parent + 1], values[parent])
    assert layer.num_active == 4


def test_fixed_grow_splits_each_block_in_halves():
    layer = SubspaceMasks(16, k_max=4, mode="fixed", initial_k=2)
    before = layer.mask_values()
    layer.grow()
    after = layer.mask_values()
    np.testing.assert_array_equal(after, block_masks(16, 4))
    for parent in range(2):
        np.testing.assert_array_equal(after[2 * parent] + after[2 * parent + 1], before[parent])


def test_grow_past_k_max_and_indivisible_fixed_dims_raise():
    layer = SubspaceMasks(8, k_max=2, mode="learnable", initial_k=2)
    with pytest.raises(ValueError, match="k_max"):
        layer.grow()
    with pytest.raises(ValueError, match="divisible"):
        SubspaceMasks(10, k_max=4, mode="fixed", initial_k=4)
    with pytest.raises(ValueError, match="mode"):
        SubspaceMasks(8, k_max=2, mode="soft")


def test_model_with_masks_saves_and_loads_with_identical_outputs(tmp_path):
    rng = np.random.default_rng(3)
    inputs = keras.Input((12,))
    dense = keras.layers.Dense(12)(inputs)
    masks = SubspaceMasks(12, k_max=4, mode="learnable", initial_k=2)
    learners = masks(dense)
    outputs = L2Normalize()(dense)
    model = keras.Model(inputs, [outputs, learners])
    masks.masks.assign(rng.normal(size=(4, 12)).astype("float32"))
    path = str(tmp_path / "masks.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = rng.normal(size=(3, 12)).astype("float32")
    for a, b in zip(model.predict(x, verbose=0), loaded.predict(x, verbose=0)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    restored = [layer for layer in loaded.layers if isinstance(layer, SubspaceMasks)]
    assert restored and restored[0].num_active == 2


def test_l2_normalize_layer_config_round_trip_and_zero_vector():
    layer = L2Normalize(epsilon=1e-8)
    clone = L2Normalize.from_config(layer.get_config())
    out = keras.ops.convert_to_numpy(clone(np.array([[3.0, 4.0], [0.0, 0.0]], "float32")))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], atol=1e-6)
