"""Callbacks of the pretext training: held-out scoring, the sampling policy, checkpoints."""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from tfdnc.pretrain.policy import ReinforceTrainer
from tfdnc.utils import read_json, write_json

# Per-permutation features the policy sees (columns of the state).
STATE_FEATURES = ("loss_zscore", "accuracy", "log_mean_loss", "sampling_share")


class HeldOutPermutations:
    """A fixed held-out set for scoring a pretext model permutation by permutation.

    Held-out input j is always shuffled by permutation `j mod N` and cut
    without jitter, so two scorings differ only through the model's weights
    and a loss difference between them is a clean reward signal.

    Args:
        inputs: held-out images (M, H, W, C) or clips, never trained on;
            M >= N so every permutation is scored (several times each is
            better: the per-permutation figures are means over M / N inputs).
        num_permutations: N.
        batch_size: scoring batch size.
    """

    def __init__(self, inputs: np.ndarray, num_permutations: int, batch_size: int = 256):
        inputs = np.asarray(inputs)
        if len(inputs) < num_permutations:
            raise ValueError(
                f"HeldOutPermutations: {len(inputs)} held-out inputs cannot score all "
                f"{num_permutations} permutations; use at least as many inputs as permutations")
        self.inputs = inputs
        self.num_permutations = int(num_permutations)
        self.labels = (np.arange(len(inputs)) % num_permutations).astype(np.int32)
        self.batch_size = int(batch_size)
        self._score_fns = {}

    def _score_fn(self, model):
        key = id(model)
        if key not in self._score_fns:
            @tf.function(reduce_retracing=True)
            def score(inputs, labels):
                shuffled, _ = model.make_examples(inputs, labels=labels, training=False)
                logits = model(shuffled, training=False)
                loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
                correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                                  tf.float32)
                return loss, correct
            self._score_fns = {key: score}
        return self._score_fns[key]

    def score(self, model) -> dict[str, np.ndarray | float]:
        """Per-permutation mean loss and accuracy (N,), and their overall means."""
        if model.num_permutations != self.num_permutations:
            raise ValueError(
                f"HeldOutPermutations: built for {self.num_permutations} permutations, the model "
                f"has {model.num_permutations}")
        fn = self._score_fn(model)
        losses, correct = [], []
        for start in range(0, len(self.inputs), self.batch_size):
            stop = start + self.batch_size
            loss, right = fn(tf.constant(self.inputs[start:stop]), tf.constant(self.labels[start:stop]))
            losses.append(loss.numpy())
            correct.append(right.numpy())
        losses = np.concatenate(losses).astype(np.float64)
        correct = np.concatenate(correct).astype(np.float64)
        counts = np.bincount(self.labels, minlength=self.num_permutations)
        per_loss = np.bincount(self.labels, losses, self.num_permutations) / counts
        per_acc = np.bincount(self.labels, correct, self.num_permutations) / counts
        return {"loss": per_loss, "accuracy": per_acc,
                "mean_loss": float(losses.mean()), "mean_accuracy": float(correct.mean())}


def policy_state(scores: dict, sampling_probs: np.ndarray) -> np.ndarray:
    """The policy's state (N, len(STATE_FEATURES)) from held-out scores."""
    loss = np.asarray(scores["loss"], dtype=np.float64)
    n = len(loss)
    zscore = (loss - loss.mean()) / (loss.std() + 1e-8)
    columns = [
        zscore,
        np.asarray(scores["accuracy"], dtype=np.float64),
        np.full(n, np.log(max(scores["mean_loss"], 1e-8))),
        np.asarray(sampling_probs, dtype=np.float64) * n,
    ]
    return np.stack(columns, axis=1).astype(np.float32)


class HeldOutMonitor(keras.callbacks.Callback):
    """Adds `heldout_loss` and `heldout_accuracy` to the epoch logs.

    Examples:
        >>> from tfdnc.backbones import build_backbone
        >>> from tfdnc.pretrain.jigsaw import JigsawTiles, OrderPredictionModel
        >>> from tfdnc.pretrain.permutations import generate_permutations
        >>> images = np.random.default_rng(0).integers(0, 256, (64, 36, 36, 1)).astype("float32")  # 3 x 3 cells of 12 px
        >>> ds, x_val = tf.data.Dataset.from_tensor_slices(images[:32]).batch(8), images[32:]
        >>> model = OrderPredictionModel(build_backbone("small_cnn", (10, 10, 1)), generate_permutations(24), JigsawTiles())
        >>> model.compile(optimizer="adam")
        >>> history = model.fit(ds, callbacks=[HeldOutMonitor(HeldOutPermutations(x_val, 24))], verbose=0)
        >>> sorted(name for name in history.history if name.startswith("heldout"))
        ['heldout_accuracy', 'heldout_loss']
    """

    def __init__(self, heldout: HeldOutPermutations):
        super().__init__()
        self.heldout = heldout

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        scores = self.heldout.score(self.model)
        logs["heldout_loss"] = scores["mean_loss"]
        logs["heldout_accuracy"] = scores["mean_accuracy"]


class PolicySamplingCallback(keras.callbacks.Callback):
    """Alternates blocks of pretext training with REINFORCE updates of the policy.

    At the start of a block the policy maps the state (held-out scores) to
    sampling probabilities, written into `model.sampling_logits`, which the
    model's `train_step` draws permutations from. After `block_steps` steps
    the held-out loss is measured again; the reward is its relative drop,
    `log(loss_before) - log(loss_after)`, and the policy takes one REINFORCE
    step on the permutations actually drawn in the block
    (`model.permutation_counts`). Epoch logs gain `heldout_loss`,
    `heldout_accuracy`, `reward` (mean over the epoch's blocks) and
    `policy_entropy`; `self.history` keeps one record per block.

    Args:
        trainer: the `ReinforceTrainer` holding the policy.
        heldout: the held-out scoring set.
        block_steps: training steps per block.

    Examples:
        >>> from tfdnc.pretrain.policy import PermutationPolicy
        >>> from tfdnc.backbones import build_backbone
        >>> from tfdnc.pretrain.jigsaw import JigsawTiles, OrderPredictionModel
        >>> from tfdnc.pretrain.permutations import generate_permutations
        >>> images = np.random.default_rng(0).integers(0, 256, (64, 36, 36, 1)).astype("float32")  # 3 x 3 cells of 12 px
        >>> ds, x_val = tf.data.Dataset.from_tensor_slices(images[:32]).batch(8), images[32:]
        >>> model = OrderPredictionModel(build_backbone("small_cnn", (10, 10, 1)), generate_permutations(24), JigsawTiles())
        >>> model.compile(optimizer="adam")
        >>> trainer, heldout = ReinforceTrainer(PermutationPolicy()), HeldOutPermutations(x_val, 24)
        >>> history = model.fit(ds, callbacks=[PolicySamplingCallback(trainer, heldout, block_steps=2)], verbose=0)
        >>> "reward" in history.history
        True
    """

    def __init__(self, trainer: ReinforceTrainer, heldout: HeldOutPermutations,
                 block_steps: int = 50):
        super().__init__()
        if block_steps < 1:
            raise ValueError(f"PolicySamplingCallback: `block_steps` must be >= 1, got {block_steps}")
        self.trainer = trainer
        self.heldout = heldout
        self.block_steps = int(block_steps)
        self.history: list[dict] = []
        self._state = None
        self._scores = None
        self._steps_in_block = 0
        self._epoch_rewards: list[float] = []

    def _start_block(self, scores):
        model = self.model
        probs = np.full(model.num_permutations, 1.0 / model.num_permutations)
        if self._state is not None:
            probs = tf.exp(model.sampling_logits).numpy()
        self._scores = scores
        self._state = policy_state(scores, probs)
        new_probs = self.trainer.probabilities(self._state)
        model.sampling_logits.assign(np.log(np.maximum(new_probs, 1e-30)).astype(np.float32))
        model.permutation_counts.assign(np.zeros(model.num_permutations, np.float32))
        self._steps_in_block = 0

    def on_train_begin(self, logs=None):
        self._state = None
        self.trainer.build(np.zeros((self.model.num_permutations, len(STATE_FEATURES)), np.float32))
        self._start_block(self.heldout.score(self.model))

    def on_train_batch_end(self, batch, logs=None):
        self._steps_in_block += 1
        if self._steps_in_block < self.block_steps:
            return
        scores = self.heldout.score(self.model)
        reward = float(np.log(max(self._scores["mean_loss"], 1e-12))
                       - np.log(max(scores["mean_loss"], 1e-12)))
        counts = self.model.permutation_counts.numpy()
        info = self.trainer.update(self._state, counts, reward)
        probs = tf.exp(self.model.sampling_logits).numpy()
        self.history.append({
            **info, "heldout_loss": scores["mean_loss"],
            "heldout_accuracy": scores["mean_accuracy"],
            "max_sampling_prob": float(probs.max()),
            "min_sampling_prob": float(probs.min()),
        })
        self._epoch_rewards.append(reward)
        self._start_block(scores)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["heldout_loss"] = self._scores["mean_loss"]
        logs["heldout_accuracy"] = self._scores["mean_accuracy"]
        if self._epoch_rewards:
            logs["reward"] = float(np.mean(self._epoch_rewards))
        if self.history:
            logs["policy_entropy"] = self.history[-1]["policy_entropy"]
        self._epoch_rewards = []


class PretrainCheckpoint(keras.callbacks.Callback):
    """Saves everything needed to resume after every epoch, plus `history.json`.

    One `tf.train.Checkpoint` holds the pretext model (with its sampling
    variables and random-generator states), its optimiser, the policy
    trainer (policy, policy optimiser, baseline) when there is one, and the
    epoch counter. `restore()` returns the epoch to resume from.

    Args:
        directory: where checkpoints go (kept: the last `max_to_keep`).
        trainer: the `ReinforceTrainer`, or None for uniform sampling.
        history_path: JSON file of the per-epoch logs (appended on resume).
    """

    def __init__(self, directory: str, model: keras.Model, trainer: ReinforceTrainer | None = None,
                 history_path: str | None = None, max_to_keep: int = 2):
        super().__init__()
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        objects = {"model": model, "optimizer": model.optimizer, "epoch": self.epoch}
        if trainer is not None:
            objects["policy_trainer"] = trainer
        self.trainer = trainer
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=max_to_keep)
        self.history_path = history_path
        self.records: list[dict] = []

    def restore(self) -> int:
        """Restores the latest checkpoint, if any; returns the epoch to start from."""
        path = self.manager.latest_checkpoint
        if path is None:
            return 0
        self.checkpoint.restore(path).assert_existing_objects_matched()
        if self.history_path and os.path.isfile(self.history_path):
            self.records = read_json(self.history_path, what="pretrain")
        return int(self.epoch.numpy())

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)
        if self.history_path:
            record = {"epoch": epoch + 1}
            record.update({k: float(v) for k, v in (logs or {}).items()})
            self.records.append(record)
            write_json(self.history_path, self.records, indent=1)
