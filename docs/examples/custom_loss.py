"""Your own loss: a soft contrastive loss on cosine similarities, trained by Divide & Conquer."""
import keras
import numpy as np
import tensorflow as tf

import tfdnc
from tfdnc.datasets import load_dataset
from tfdnc.distances import pairwise_dot
from tfdnc.losses import LOSSES, get_loss
from tfdnc.losses.base import MetricLoss, safe_divide


@keras.saving.register_keras_serializable(package="my_losses")  # so model.keras files load it
class SoftContrastiveLoss(MetricLoss):
    """softplus(scale (m_pos - s)) over positive pairs + softplus(scale (s - m_neg)) over negatives.

    s is the cosine similarity of two L2-normalised embeddings (the model normalises them
    for every loss whose `expects_normalized` is True, the default).
    """

    _higher_is_harder = True  # a similarity: Symmetrical Synthesis keeps the largest negative

    def __init__(self, pos_margin: float = 0.8, neg_margin: float = 0.3, scale: float = 10.0, **kwargs):
        super().__init__(**kwargs)  # symmetrical=, symm_rule=, reducer=, name=
        if not -1.0 <= neg_margin < pos_margin <= 1.0:
            raise ValueError(f"SoftContrastiveLoss: need -1 <= neg_margin < pos_margin <= 1, "
                             f"got {neg_margin}, {pos_margin}")
        self.pos_margin, self.neg_margin, self.scale = float(pos_margin), float(neg_margin), float(scale)

    def _pairwise(self, x, y):
        return pairwise_dot(x, y)  # y=None compares the batch with itself

    def _compute(self, labels, embeddings, sample_weight=None, reference=None, learner=None):
        # (B, B) similarities with Symmetrical Synthesis applied to the negatives when asked,
        # and the positive / negative masks (the diagonal is in neither).
        s, positive, negative, stats = self._pairs(labels, embeddings, reference)
        pos, neg = tf.cast(positive, tf.float32), tf.cast(negative, tf.float32)
        pos_terms = tf.nn.softplus(self.scale * (self.pos_margin - s)) * pos
        neg_terms = tf.nn.softplus(self.scale * (s - self.neg_margin)) * neg
        loss = self.reducer(pos_terms, pos, sample_weight) + self.reducer(neg_terms, neg, sample_weight)
        violated = tf.reduce_sum(pos * tf.cast(s < self.pos_margin, tf.float32)) + tf.reduce_sum(
            neg * tf.cast(s > self.neg_margin, tf.float32))
        active = safe_divide(violated, tf.reduce_sum(pos) + tf.reduce_sum(neg))
        return loss, {**stats, "active_fraction": active}

    def get_config(self) -> dict:
        return {**super().get_config(), "pos_margin": self.pos_margin, "neg_margin": self.neg_margin,
                "scale": self.scale}


LOSSES["soft_contrastive"] = SoftContrastiveLoss  # get_loss("soft_contrastive", ...) builds it by name

# Alone, on a batch: a scalar and the statistics the model logs.
labels = np.array([0, 0, 1, 1, 2, 2])
embeddings = tf.math.l2_normalize(tf.random.stateless_normal((6, 8), seed=(1, 2)), axis=1)
loss = get_loss("soft_contrastive", symmetrical=True)
value, stats = loss.compute_loss_and_stats(labels, embeddings)
print(f"loss {float(value):.3f}, active {float(stats['active_fraction']):.2f}, "
      f"synthetic {float(stats['synthetic_fraction']):.2f}")

# In a Divide & Conquer model: K grows 1 -> 2 inside fit, the loss runs once per learner.
splits = load_dataset("shapes", num_classes=24, images_per_class=8)
model = tfdnc.DivideAndConquerModel(tfdnc.build_backbone("small_cnn", (32, 32, 3)), embedding_dim=16, k_final=2)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
history = model.fit(splits.train.images, splits.train.labels, epochs=2, verbose=0)
print("K after fit:", model.num_learners, "| loss per epoch:", np.round(history.history["loss"], 3))

# Registered, the loss is saved and rebuilt by name, as Keras does for its own.
again = keras.losses.deserialize(keras.losses.serialize(loss))
print(type(again).__name__, again.get_config()["pos_margin"], again.symmetrical)
model.save("soft_contrastive.keras")
restored = tfdnc.load_model("soft_contrastive.keras")
