"""Learnable masks that divide the embedding: the run reports it, and the papers' ratio makes it happen."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfdnc.layers.masks import SubspaceMasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset", "digits", "--image-size", "16", "--embedding-dim", "16", "--classes-per-batch", "4",
        "--images-per-class", "4", "--kmeans-iters", "5", "--eval-every", "100", "--verbose", "0",
        "--epochs", "3", "--recluster-every", "1", "--steps-per-epoch", "20", "--k-final", "2",
        "--no-symmetrical", "--no-export", "--full-embedding-epoch", "none"]


def test_statistics_of_shared_disjoint_and_switched_off_masks():
    masks = SubspaceMasks(8, 4, mode="learnable", initial_k=2)
    assert masks.statistics() == {"mask_cosine": pytest.approx(1.0), "mask_off_share": 0.0}  # copies of ones
    fixed = SubspaceMasks(8, 4, mode="fixed", initial_k=4).statistics()
    assert fixed == {"mask_cosine": pytest.approx(0.0), "mask_off_share": pytest.approx(0.75)}
    values = np.ones((4, 8), np.float32)
    values[1, :4] = 0.05  # half of learner 1's dimensions below 0.1 x its largest entry
    masks.masks.assign(values)
    stats = masks.statistics()
    assert stats["mask_off_share"] == pytest.approx(4 / 16)
    expected = (4 * 0.05 + 4) / (np.sqrt(8) * np.sqrt(4 * 0.05 ** 2 + 4))
    assert stats["mask_cosine"] == pytest.approx(expected, rel=1e-5)


def _mask_history(run_dir, *flags):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    argv = [sys.executable, os.path.join(ROOT, "train.py"), *TINY, "--run-dir", str(run_dir), *flags]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.load(open(run_dir / "history.json")), json.load(open(run_dir / "metrics.json"))


def test_masks_divide_within_40_steps_at_the_papers_mask_ratio(tmp_path):
    """K = 2 after epoch 1; 40 steps later the two masks' cosine is below 0.9 with masks at 100x the network.

    Measured: 0.65 after 40 steps (and 0.998 with masks at the network's
    rate, as tfdnc trained before --mask-lr-mult); a run that drops the
    multiplier stays above 0.99 and fails here.
    """
    history, metrics = _mask_history(tmp_path / "papers", "--learning-rate", "1e-3", "--mask-lr-mult", "100",
                                      "--lr-schedule", "constant", "--warmup-epochs", "0")
    assert [h["K"] for h in history] == [1, 2, 2]
    assert history[0]["mask_cosine"] == pytest.approx(1.0)
    assert history[-1]["mask_cosine"] < 0.9
    assert history[-1]["mask_learning_rate"] == pytest.approx(0.1)
    assert metrics["mask_cosine"] == pytest.approx(history[-1]["mask_cosine"])  # the run's final figures
    assert 0.0 <= metrics["mask_off_share"] <= 1.0


def test_a_runs_model_keras_hands_its_backbone_to_the_next_run(tmp_path, make_tiny_model):
    """--backbone-weights RUN/model.keras: the emulated papers' regime starts from that run's backbone."""
    import keras

    from tfdnc.train import backbone_weights
    from tfdnc.backbones import build_backbone

    source = make_tiny_model(input_shape=(16, 16, 1), width=8)
    for variable in source.backbone.trainable_variables:  # weights no fresh backbone has
        variable.assign(keras.random.normal(variable.shape, seed=3))
    source.save(tmp_path / "model.keras")
    with backbone_weights(str(tmp_path / "model.keras")) as path:
        target = build_backbone("small_cnn", (24, 24, 1), weights=path, width=8)  # other image size: fully conv
    for ours, theirs in zip(target.weights, source.backbone.weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs))
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(tmp_path / "other.keras")
    with pytest.raises(ValueError, match="--backbone-weights .*other.keras"):
        with backbone_weights(str(tmp_path / "other.keras")):
            pass
