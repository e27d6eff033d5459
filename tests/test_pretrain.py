"""Tests of tfdnc.pretrain: permutation sets, tiles, the policy gradient, the pretext fit, hand-off."""

import itertools
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import tfdnc  # noqa: F401  (sets the Keras backend)
import keras

from tfdnc.backbones import SMALL_CNN_BATCHNORM_MOMENTUM, build_backbone
from tfdnc.pretrain import (ClipFrames, JigsawTiles, OrderPredictionModel, PermutationPolicy,
                            ReinforceTrainer, export_backbone_weights, generate_permutations,
                            hamming_distances, inverse_permutations, mean_hamming_distance,
                            min_hamming_distance, recalibrate_batchnorm, reinforce_loss,
                            shuffle_items)
from tfdnc.pretrain.callbacks import HeldOutPermutations, PolicySamplingCallback, policy_state
from tfdnc.pretrain.permutations import validate_permutations


# --- permutation sets -------------------------------------------------------

def test_permutation_set_is_valid_distinct_and_min_distance_matches_brute_force():
    perms = generate_permutations(30, 9, seed=3)
    assert perms.shape == (30, 9)
    assert (np.sort(perms, axis=1) == np.arange(9)).all()
    assert len({tuple(p) for p in perms}) == 30
    brute = min(int(np.sum(a != b)) for a, b in itertools.combinations(perms, 2))
    assert min_hamming_distance(perms) == brute
    dist = hamming_distances(perms)
    assert (dist == dist.T).all() and (np.diag(dist) == 0).all()


def test_greedy_selection_picks_the_farthest_candidate_each_time():
    perms = generate_permutations(12, 5, seed=1, selection="max_min")
    every = np.array(list(itertools.permutations(range(5))))
    for k in range(1, len(perms)):
        chosen = perms[:k]
        to_set = np.min(np.count_nonzero(every[:, None, :] != chosen[None], axis=-1), axis=1)
        got = np.min(np.count_nonzero(chosen != perms[k], axis=-1))
        assert got == to_set.max(), f"row {k} is not a farthest candidate"


def test_max_mean_selection_picks_the_first_candidate_of_largest_mean_distance():
    # Brattoli's select_permutations.py: D = mean Hamming distance to the set, j = D.argmax()
    perms = generate_permutations(12, 5, seed=1, selection="max_mean")
    every = np.array(list(itertools.permutations(range(5))))
    for k in range(1, len(perms)):
        chosen = perms[:k]
        rest = np.array([p for p in every if not (p == chosen).all(axis=1).any()])
        mean_to_set = np.count_nonzero(rest[:, None, :] != chosen[None], axis=-1).mean(axis=1)
        np.testing.assert_array_equal(perms[k], rest[mean_to_set.argmax()], err_msg=f"row {k}")


def test_max_mean_and_max_min_sets_each_win_their_own_criterion():
    sets = {}
    for seed in (0, 1):
        by_mean = generate_permutations(30, 9, seed=seed, selection="max_mean")
        by_min = generate_permutations(30, 9, seed=seed, selection="max_min")
        sets[seed] = {"max_mean": by_mean, "max_min": by_min}
        pairs = list(itertools.combinations(range(30), 2))
        brute = {}
        for name, p in sets[seed].items():
            d = [int(np.sum(p[i] != p[j])) for i, j in pairs]
            brute[name] = (np.mean(d), min(d))
            assert mean_hamming_distance(p) == pytest.approx(brute[name][0])
            assert min_hamming_distance(p) == brute[name][1]
            assert len({tuple(row) for row in p}) == 30
            assert (np.sort(p, axis=1) == np.arange(9)).all()
        # each rule wins its own criterion, strictly at this size
        assert brute["max_mean"][0] > brute["max_min"][0]
        assert brute["max_min"][1] > brute["max_mean"][1]
    for selection in ("max_mean", "max_min"):
        # deterministic per seed, different across seeds
        np.testing.assert_array_equal(generate_permutations(30, 9, seed=1, selection=selection),
                                      sets[1][selection])
        assert not np.array_equal(sets[0][selection], sets[1][selection])
    # the default is max_min, the set docs/guides/pretraining.md describes
    np.testing.assert_array_equal(generate_permutations(30, 9, seed=0), sets[0]["max_min"])
    with pytest.raises(ValueError, match="selection"):
        generate_permutations(10, 9, selection="max")


def test_greedy_set_is_farther_apart_than_a_random_set():
    rng = np.random.default_rng(0)
    perms = generate_permutations(100, 9, seed=0)
    random_set = np.array([rng.permutation(9) for _ in range(100)])
    assert min_hamming_distance(perms) >= 6 > min_hamming_distance(random_set)


def test_small_item_counts_and_bad_arguments():
    assert len({tuple(p) for p in generate_permutations(24, 4)}) == 24  # all of 4!
    with pytest.raises(ValueError, match="num_permutations"):
        generate_permutations(25, 4)
    with pytest.raises(ValueError, match="num_candidates"):
        generate_permutations(5, 12)
    with pytest.raises(ValueError, match="distinct"):
        validate_permutations(np.array([[0, 1], [0, 1]]))
    with pytest.raises(ValueError, match="permutation of"):
        validate_permutations(np.array([[0, 0, 1]]))


# --- tiles and shuffling ----------------------------------------------------

def test_shuffling_matches_numpy_and_the_inverse_permutation_undoes_it():
    rng = np.random.default_rng(0)
    perms = generate_permutations(20, 9, seed=0)
    items = rng.normal(size=(6, 9, 3, 3, 2)).astype(np.float32)
    labels = rng.integers(0, 20, size=6)
    shuffled = shuffle_items(items, perms, labels).numpy()
    for b in range(6):
        for i in range(9):
            np.testing.assert_array_equal(shuffled[b, i], items[b, perms[labels[b], i]])
    inverse = inverse_permutations(perms)
    restored = np.stack([shuffled[b][inverse[labels[b]]] for b in range(6)])
    np.testing.assert_array_equal(restored, items)
    # the inverse of the inverse is the permutation itself
    np.testing.assert_array_equal(inverse_permutations(inverse), perms)


def test_centre_tiles_are_the_grid_cells_centres():
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, size=(2, 12, 12, 3)).astype(np.float32)
    tiler = JigsawTiles(grid=3, cell_size=4, tile_size=2, jitter=False, normalize=False)
    tiles = tiler(images).numpy()  # 12 = 3 * 4: no resizing
    assert tiles.shape == (2, 9, 2, 2, 3)
    for r, c in itertools.product(range(3), range(3)):
        np.testing.assert_allclose(tiles[:, 3 * r + c], images[:, 4 * r + 1 : 4 * r + 3,
                                                                 4 * c + 1 : 4 * c + 3], atol=1e-4)


def test_jittered_tiles_lie_inside_their_own_cell_and_vary():
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 255, size=(4, 15, 15, 1)).astype(np.float32)
    tiler = JigsawTiles(grid=3, cell_size=5, tile_size=3, jitter=True, normalize=False, seed=0)
    tiles = tiler(images, training=True).numpy()
    offsets = set()
    for b, r, c in itertools.product(range(4), range(3), range(3)):
        cell = images[b, 5 * r : 5 * r + 5, 5 * c : 5 * c + 5]
        found = [(y, x) for y in range(3) for x in range(3)
                 if np.allclose(cell[y : y + 3, x : x + 3], tiles[b, 3 * r + c], atol=1e-3)]
        assert found, f"tile {(b, r, c)} is not a crop of its cell"
        offsets.add(found[0])
    assert len(offsets) > 1  # jitter moves the crops


def test_normalised_tiles_have_fixed_mean_per_channel():
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 100, size=(2, 36, 36, 3)).astype(np.float32)
    images[..., 0] += 100.0  # a colour cast the network must not see
    tiles = JigsawTiles(cell_size=12, tile_size=10, jitter=False)(images).numpy()
    np.testing.assert_allclose(tiles.mean(axis=(2, 3)), 127.5, atol=0.5)


def test_clip_frames_crop_each_frame_from_its_own_frame():
    rng = np.random.default_rng(4)
    clips = rng.uniform(0, 255, size=(2, 4, 8, 8, 1)).astype(np.float32)
    frames = ClipFrames(crop_size=6, normalize=False, seed=0)(clips, training=True).numpy()
    assert frames.shape == (2, 4, 6, 6, 1)
    for b, t in itertools.product(range(2), range(4)):
        assert any(np.allclose(clips[b, t, y : y + 6, x : x + 6], frames[b, t], atol=1e-4)
                   for y in range(3) for x in range(3))


# --- the policy gradient ----------------------------------------------------

def test_reinforce_estimate_matches_the_exact_policy_gradient():
    # Bandit with known rewards: grad E[r] w.r.t. the logits is p * (r - E[r]).
    rng = np.random.default_rng(0)
    rewards = np.array([0.2, 1.0, -0.5, 0.3])
    logits = tf.Variable(rng.normal(size=4).astype(np.float32))
    probs = tf.nn.softmax(logits).numpy()
    samples = 20_000
    actions = rng.choice(4, size=samples, p=probs)
    baseline = 0.4  # any action-independent baseline keeps the estimate unbiased
    grad = np.zeros(4)
    for a in range(4):  # actions with the same reward share one surrogate term
        counts = np.zeros(4, np.float32)
        counts[a] = np.sum(actions == a)
        with tf.GradientTape() as tape:
            loss = reinforce_loss(tf.nn.log_softmax(logits), counts, rewards[a] - baseline)
        grad -= tape.gradient(loss, logits).numpy() * counts[a] / samples
    exact = probs * (rewards - probs @ rewards)
    np.testing.assert_allclose(grad, exact, atol=0.02)


def test_policy_moves_probability_to_the_best_arm_of_a_bandit():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    arms = 5
    means = np.array([0.1, 0.2, 0.9, 0.3, 0.0])  # arm 2 is best
    state = np.eye(arms, dtype=np.float32)  # each arm identified by its features
    trainer = ReinforceTrainer(PermutationPolicy(8), learning_rate=0.05, entropy_weight=0.0,
                               uniform_mix=0.0)
    trainer.build(state)
    start = trainer.probabilities(state)
    np.testing.assert_allclose(start, 1 / arms, atol=1e-6)  # the untrained policy is uniform
    for _ in range(150):
        probs = trainer.probabilities(state)
        action = rng.choice(arms, p=probs / probs.sum())
        counts = np.eye(arms, dtype=np.float32)[action]
        trainer.update(state, counts, means[action] + rng.normal(0, 0.1))
    end = trainer.probabilities(state)
    assert end[2] > 0.6 and np.argmax(end) == 2, end


def test_advantage_is_normalised_and_clipped():
    state = np.eye(3, dtype=np.float32)
    trainer = ReinforceTrainer(PermutationPolicy(4), baseline_momentum=0.5, advantage_clip=2.0)
    trainer.build(state)
    counts = np.array([1.0, 0.0, 0.0], np.float32)
    assert trainer.update(state, counts, 1.0)["advantage"] == 0.0  # the first reward is the baseline
    info = trainer.update(state, counts, 1.5)  # reward std still 0: raw advantage
    assert info["baseline"] == 1.0 and info["advantage"] == pytest.approx(0.5)
    # running variance 0.5 * 0.25 = 0.125 -> (3 - 1.25) / 0.354 = 4.9, clipped to 2
    info = trainer.update(state, counts, 3.0)
    assert info["baseline"] == pytest.approx(1.25) and info["advantage"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="finite"):
        trainer.update(state, counts, float("nan"))


def test_uniform_mix_keeps_every_permutation_reachable():
    trainer = ReinforceTrainer(PermutationPolicy(4), uniform_mix=0.2)
    state = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    trainer.build(state)
    trainer.policy.score.kernel.assign(np.full((4, 1), 50.0, np.float32))  # a very peaked policy
    probs = trainer.probabilities(state)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
    assert probs.min() >= 0.2 / 10 - 1e-6


def test_policy_state_features():
    scores = {"loss": np.array([1.0, 2.0, 3.0]), "accuracy": np.array([0.9, 0.5, 0.1]),
              "mean_loss": 2.0}
    state = policy_state(scores, np.array([0.2, 0.3, 0.5]))
    assert state.shape == (3, 4)
    np.testing.assert_allclose(state[:, 0], [-1.2247, 0.0, 1.2247], atol=1e-3)
    np.testing.assert_allclose(state[:, 2], np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(state[:, 3], [0.6, 0.9, 1.5], rtol=1e-6)


# --- pretext model ------------------------------------------------------------

@pytest.fixture(scope="module")
def digit_images():
    from tfdnc.datasets import load_dataset

    return load_dataset("digits").train.images[:320]  # (N, 16, 16, 1) uint8


def _tiny_model(num_permutations=8, seed=0):
    keras.utils.set_random_seed(seed)
    backbone = build_backbone("small_cnn", (6, 6, 1), width=4)
    model = OrderPredictionModel(backbone, generate_permutations(num_permutations, 9, seed=seed),
                                 JigsawTiles(3, 7, 6, seed=seed), item_units=16, hidden_units=32,
                                 dropout=0.0, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    return model


def test_tiny_pretext_fit_lowers_the_loss(digit_images):
    model = _tiny_model()
    ds = tf.data.Dataset.from_tensor_slices(digit_images).repeat().batch(32)
    history = model.fit(ds, epochs=4, steps_per_epoch=15, shuffle=False, verbose=0).history
    assert history["loss"][-1] < 0.8 * history["loss"][0], history["loss"]
    # uniform sampling (zero logits) draws every permutation
    assert (model.permutation_counts.numpy() > 0).all()
    assert model.permutation_counts.numpy().sum() == 4 * 15 * 32


def test_sampling_logits_steer_the_drawn_permutations():
    model = _tiny_model(num_permutations=4)
    model.sampling_logits.assign(np.log(np.array([0.7, 0.1, 0.1, 0.1], np.float32)))
    draws = model.sample_permutations(4000).numpy()
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 4000, [0.7, 0.1, 0.1, 0.1],
                               atol=0.03)


def test_policy_callback_sets_a_distribution_and_resets_counts(digit_images):
    model = _tiny_model()
    heldout = HeldOutPermutations(digit_images[:16], model.num_permutations, batch_size=8)
    trainer = ReinforceTrainer(PermutationPolicy(4), learning_rate=0.1)
    callback = PolicySamplingCallback(trainer, heldout, block_steps=3)
    ds = tf.data.Dataset.from_tensor_slices(digit_images[16:]).repeat().batch(16)
    logs = model.fit(ds, epochs=1, steps_per_epoch=7, shuffle=False, callbacks=[callback],
                     verbose=0).history
    assert len(callback.history) == 2  # blocks end at steps 3 and 6
    assert {"heldout_loss", "heldout_accuracy", "reward", "policy_entropy"} <= set(logs)
    probs = np.exp(model.sampling_logits.numpy())
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
    assert model.permutation_counts.numpy().sum() == 1 * 16  # one step since the last block
    assert int(trainer.updates.numpy()) == 2


def test_heldout_scores_match_a_direct_evaluation(digit_images):
    model = _tiny_model()
    heldout = HeldOutPermutations(digit_images[:24], model.num_permutations, batch_size=10)
    scores = heldout.score(model)
    labels = np.arange(24) % model.num_permutations
    shuffled, _ = model.make_examples(tf.constant(digit_images[:24]), labels=labels)
    logits = model(shuffled).numpy()
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    losses = -log_p[np.arange(24), labels]
    for k in range(model.num_permutations):
        np.testing.assert_allclose(scores["loss"][k], losses[labels == k].mean(), rtol=1e-4)
    with pytest.raises(ValueError, match="at least as many"):
        HeldOutPermutations(digit_images[:4], 8)


# --- hand-off -------------------------------------------------------------------

def test_tile_weights_load_into_a_full_image_backbone(tmp_path, digit_images):
    keras.utils.set_random_seed(0)
    tile_backbone = build_backbone("small_cnn", (6, 6, 1), width=4)
    for v in tile_backbone.trainable_variables:  # make the weights distinguishable from init
        v.assign(np.random.default_rng(0).normal(size=v.shape).astype(np.float32))
    path = str(tmp_path / "trunk.weights.h5")
    export_backbone_weights(tile_backbone, path, "small_cnn", (16, 16, 1), digit_images[:64],
                            metadata={"note": "test"}, width=4)
    full = build_backbone("small_cnn", (16, 16, 1), weights=path, width=4)
    for a, b in zip(tile_backbone.trainable_variables, full.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert full(digit_images[:2].astype(np.float32)).shape == (2, 32)
    with open(tmp_path / "trunk.json") as f:
        assert json.load(f)["note"] == "test"
    with pytest.raises(ValueError, match="--out"):
        export_backbone_weights(tile_backbone, str(tmp_path / "trunk.h5"), "small_cnn", (16, 16, 1))


def test_recalibrated_batchnorm_holds_the_image_statistics(digit_images):
    backbone = build_backbone("small_cnn", (16, 16, 1), width=4)
    images = digit_images[:40].astype(np.float32)
    recalibrate_batchnorm(backbone, images, batch_size=40)  # one batch: exact statistics
    trunk = backbone.get_layer("small_cnn")
    conv = trunk.layers[1]
    bn = trunk.layers[2]
    pre = conv(backbone.get_layer("pixel_normalization")(images)).numpy()
    np.testing.assert_allclose(bn.moving_mean.numpy(), pre.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), pre.var(axis=(0, 1, 2)), rtol=1e-3,
                               atol=1e-6)
    assert bn.momentum == SMALL_CNN_BATCHNORM_MOMENTUM  # restored (small_cnn's default, 0.9)


def test_cli_writes_loadable_weights_and_resumes(tmp_path):
    from tfdnc.pretrain.cli import main

    out = str(tmp_path / "pre.weights.h5")
    run_dir = str(tmp_path / "run")
    args = ["--dataset", "digits", "--width", "4", "--num-permutations", "10", "--heldout", "20",
            "--batch-size", "16", "--steps-per-epoch", "4", "--block-steps", "2",
            "--item-units", "8", "--hidden-units", "16", "--out", out, "--run-dir", run_dir,
            "--verbose", "0"]
    assert main(args + ["--epochs", "1"]) == 0
    first = json.load(open(os.path.join(run_dir, "history.json")))
    assert [r["epoch"] for r in first] == [1]
    assert main(args + ["--epochs", "2", "--resume"]) == 0
    history = json.load(open(os.path.join(run_dir, "history.json")))
    assert [r["epoch"] for r in history] == [1, 2]  # epoch 1 was not repeated
    assert len(json.load(open(os.path.join(run_dir, "policy_history.json")))) == 2
    # the run's permutation set is kept: resuming with another selection is refused
    np.testing.assert_array_equal(np.load(os.path.join(run_dir, "permutations.npy")),
                                  generate_permutations(10, 9, seed=0, selection="max_min"))
    assert main(args + ["--epochs", "3", "--resume", "--permutation-selection", "max_mean"]) == 2
    backbone = build_backbone("small_cnn", (16, 16, 1), weights=out, width=4)
    assert backbone.output_shape[-1] == 32
    assert main(args + ["--epochs", "1", "--out", str(tmp_path / "bad.h5")]) == 2


def test_pretext_model_config_round_trip(digit_images):
    model = _tiny_model()
    x, labels = model.make_examples(tf.constant(digit_images[:4]), labels=np.arange(4))
    expected = model(x).numpy()
    clone = OrderPredictionModel.from_config(model.get_config())
    clone(x)
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone.permutations, model.permutations)
    assert clone.items.get_config() == model.items.get_config()
    np.testing.assert_allclose(clone(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="yields 9 items"):
        OrderPredictionModel(model.backbone, generate_permutations(4, 4), JigsawTiles())


def test_temporal_variant_from_the_command_line(tmp_path):
    from tfdnc.pretrain.cli import main

    # Clips of a bright square moving left to right: frame order is learnable.
    clips = np.zeros((120, 4, 12, 12, 1), np.uint8)
    rng = np.random.default_rng(0)
    for n in range(120):
        y = rng.integers(0, 8)
        for t in range(4):
            clips[n, t, y : y + 4, 2 * t : 2 * t + 4] = 255
    path = tmp_path / "clips.npy"
    np.save(path, clips)
    out = str(tmp_path / "frames.weights.h5")
    assert main(["--clips", str(path), "--num-permutations", "24", "--heldout", "24",
                 "--width", "4", "--batch-size", "16", "--epochs", "1", "--steps-per-epoch", "3",
                 "--sampling", "uniform", "--item-units", "8", "--hidden-units", "16",
                 "--out", out, "--verbose", "0"]) == 0
    summary = json.load(open(str(tmp_path / "frames.json")))
    assert summary["pretrain"]["temporal"] and summary["pretrain"]["num_items"] == 4
    assert summary["image_shape"] == [12, 12, 1]
    build_backbone("small_cnn", (12, 12, 1), weights=out, width=4)
    assert main(["--clips", str(path), "--num-permutations", "25", "--heldout", "25",
                 "--out", out, "--verbose", "0"]) == 2  # 4! = 24 permutations only


def test_folder_of_images_is_read_recursively(tmp_path):
    from PIL import Image

    from tfdnc.pretrain.sources import find_images, load_unlabelled

    rng = np.random.default_rng(0)
    for i, sub in enumerate(["a", "a", "b/c"]):
        os.makedirs(tmp_path / sub, exist_ok=True)
        pixels = rng.integers(0, 255, size=(20 + i, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / sub / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    assert len(find_images(str(tmp_path))) == 3
    images = load_unlabelled(data_dir=str(tmp_path), image_size=16, channels=1)
    assert images.shape == (3, 16, 16, 1) and images.dtype == np.uint8
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="--data-dir"):
        find_images(str(tmp_path / "empty"))
