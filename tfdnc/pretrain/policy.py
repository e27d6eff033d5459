"""The learned permutation-sampling policy and its REINFORCE update.

Following Buchler, Brattoli & Ommer (ECCV 2018), the pretext network is
trained in blocks of steps; before each block a small policy network looks
at the pretext network's current per-permutation performance on held-out
images (the *state*) and outputs a distribution over the N permutations
(the *action*: which permutations the next block trains on). After the
block, the drop in held-out loss is the *reward*, and the policy takes one
REINFORCE step with a moving-average baseline.

The policy scores every permutation with the same small MLP applied to that
permutation's row of the state, so it generalises across permutations and
its size does not depend on N.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def reinforce_loss(log_probs: tf.Tensor, action_counts: tf.Tensor, advantage) -> tf.Tensor:
    """Surrogate loss whose gradient is the REINFORCE policy-gradient estimate.

    For actions a_1..a_m drawn from p (given here as counts per action),
    `-advantage * mean_j log p(a_j)`; its gradient is
    `-advantage * mean_j grad log p(a_j)`, an unbiased estimate of
    `-grad E[reward]` when `advantage = reward - baseline` (any baseline that
    does not depend on the actions keeps it unbiased).

    Args:
        log_probs: (N,) log-probabilities of the N actions.
        action_counts: (N,) how often each action was taken.
        advantage: scalar, reward minus baseline.
    """
    counts = tf.cast(action_counts, log_probs.dtype)
    total = tf.maximum(tf.reduce_sum(counts), 1.0)
    return -tf.cast(advantage, log_probs.dtype) * tf.reduce_sum(counts * log_probs) / total


@keras.saving.register_keras_serializable(package="tfdnc")
class PermutationPolicy(keras.Model):
    """Maps a state (N, F) of per-permutation features to N sampling logits.

    Args:
        hidden_units: width of the shared per-permutation MLP.

    Examples:
        >>> policy = PermutationPolicy(hidden_units=16)
        >>> logits = policy(np.zeros((100, 4), "float32"))  # (100,)
    """

    def __init__(self, hidden_units: int = 32, **kwargs):
        super().__init__(**kwargs)
        if hidden_units < 1:
            raise ValueError(f"PermutationPolicy: `hidden_units` must be >= 1, got {hidden_units}")
        self.hidden_units = int(hidden_units)
        self.hidden = keras.layers.Dense(self.hidden_units, activation="tanh", name="hidden")
        # Zero-initialised output: the untrained policy is uniform.
        self.score = keras.layers.Dense(1, kernel_initializer="zeros", name="score")

    def call(self, state):
        state = tf.convert_to_tensor(state, tf.float32)
        if state.shape.rank != 2:
            raise ValueError(f"PermutationPolicy: state must be (N, F), got shape {state.shape}")
        return tf.squeeze(self.score(self.hidden(state)), axis=-1)

    def get_config(self):
        return {**super().get_config(), "hidden_units": self.hidden_units}


class ReinforceTrainer(tf.Module):
    """REINFORCE with a moving-average baseline for a `PermutationPolicy`.

    The behaviour distribution mixes the policy with the uniform distribution,
    `p = (1 - uniform_mix) * softmax(logits) + uniform_mix / N`, so every
    permutation keeps being trained (the pretext network must still solve all
    of them) and the policy keeps exploring. Advantages are divided by a
    running standard deviation of the rewards, since the held-out loss drops
    by orders of magnitude less late in training than early on.

    Args:
        policy: the policy network.
        learning_rate: Adam learning rate of the policy.
        baseline_momentum: momentum of the reward's moving average (baseline)
            and of its running variance.
        entropy_weight: weight of an entropy bonus that keeps the policy from
            collapsing onto a few permutations on noisy rewards.
        uniform_mix: share of uniform sampling in the behaviour distribution.
        advantage_clip: bound on the normalised advantage; the running
            standard deviation rests on very few rewards in the first
            updates, where one large reward would otherwise give a huge step.

    Examples:
        >>> trainer = ReinforceTrainer(PermutationPolicy())
        >>> state = np.zeros((24, 4), "float32")   # one row per permutation (callbacks.policy_state)
        >>> probs = trainer.probabilities(state)          # sample the next block from these
        >>> action_counts = np.bincount(np.random.default_rng(0).choice(24, 50, p=probs / probs.sum()), minlength=24)
        >>> reward = 0.1
        >>> diagnostics = trainer.update(state, action_counts, reward)  # after the block
        >>> sorted(diagnostics)
        [...'reward'...]
    """

    def __init__(self, policy: PermutationPolicy, learning_rate: float = 1e-2,
                 baseline_momentum: float = 0.9, entropy_weight: float = 1e-2,
                 uniform_mix: float = 0.1, advantage_clip: float = 5.0, name: str | None = None):
        super().__init__(name=name)
        if learning_rate <= 0:
            raise ValueError(f"ReinforceTrainer: `learning_rate` must be > 0, got {learning_rate}")
        if not 0.0 <= baseline_momentum < 1.0:
            raise ValueError(
                f"ReinforceTrainer: `baseline_momentum` must be in [0, 1), got {baseline_momentum}")
        if entropy_weight < 0:
            raise ValueError(f"ReinforceTrainer: `entropy_weight` must be >= 0, got {entropy_weight}")
        if not 0.0 <= uniform_mix < 1.0:
            raise ValueError(f"ReinforceTrainer: `uniform_mix` must be in [0, 1), got {uniform_mix}")
        if advantage_clip <= 0:
            raise ValueError(f"ReinforceTrainer: `advantage_clip` must be > 0, got {advantage_clip}")
        self.policy = policy
        self.advantage_clip = float(advantage_clip)
        self.optimizer = keras.optimizers.Adam(learning_rate)
        self.baseline_momentum = float(baseline_momentum)
        self.entropy_weight = float(entropy_weight)
        self.uniform_mix = float(uniform_mix)
        self.baseline = tf.Variable(0.0, trainable=False, name="baseline")
        self.reward_variance = tf.Variable(0.0, trainable=False, name="reward_variance")
        self.updates = tf.Variable(0, trainable=False, dtype=tf.int64, name="updates")

    def build(self, state) -> None:
        """Creates the policy's and optimiser's variables (needed before restoring)."""
        self.policy(state)
        if not self.optimizer.built:
            self.optimizer.build(self.policy.trainable_variables)

    def log_probabilities(self, state) -> tf.Tensor:
        """(N,) log-probabilities of the behaviour distribution."""
        log_policy = tf.nn.log_softmax(self.policy(state))
        if self.uniform_mix == 0.0:
            return log_policy
        log_uniform = -tf.math.log(tf.cast(tf.shape(log_policy)[0], log_policy.dtype))
        return tf.reduce_logsumexp(tf.stack([
            log_policy + np.log1p(-self.uniform_mix),
            tf.broadcast_to(log_uniform + np.log(self.uniform_mix), tf.shape(log_policy)),
        ]), axis=0)

    def probabilities(self, state) -> np.ndarray:
        """(N,) sampling probabilities for the next block."""
        return tf.exp(self.log_probabilities(state)).numpy()

    def update(self, state, action_counts, reward: float) -> dict[str, float]:
        """One REINFORCE step for the actions taken in `state` and their reward.

        Returns the step's diagnostics: reward, baseline (before the update),
        advantage, entropy of the policy.
        """
        reward = float(reward)
        if not np.isfinite(reward):
            raise ValueError(f"ReinforceTrainer.update: reward must be finite, got {reward}")
        counts = tf.convert_to_tensor(action_counts, tf.float32)
        first = int(self.updates.numpy()) == 0
        baseline = reward if first else float(self.baseline.numpy())
        scale = np.sqrt(float(self.reward_variance.numpy())) if not first else 0.0
        advantage = (reward - baseline) / (scale + 1e-8) if scale > 0 else reward - baseline
        advantage = float(np.clip(advantage, -self.advantage_clip, self.advantage_clip))
        with tf.GradientTape() as tape:
            log_probs = self.log_probabilities(state)
            log_policy = tf.nn.log_softmax(self.policy(state))
            entropy = -tf.reduce_sum(tf.exp(log_policy) * log_policy)
            loss = reinforce_loss(log_probs, counts, advantage) - self.entropy_weight * entropy
        variables = self.policy.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        m = self.baseline_momentum
        self.reward_variance.assign(
            (reward - baseline) ** 2 if first else
            m * float(self.reward_variance.numpy()) + (1 - m) * (reward - baseline) ** 2)
        self.baseline.assign(m * baseline + (1 - m) * reward)
        self.updates.assign_add(1)
        return {"reward": reward, "baseline": baseline, "advantage": float(advantage),
                "policy_entropy": float(entropy.numpy())}
