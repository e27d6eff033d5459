"""Extend tfdnc: your own loss, trained with `model.fit`.

A loss is one class: subclass `tfdnc.losses.MetricLoss`, implement
`compute(batch)` (a `Batch` of labels (B,) and embeddings (B, D) in, the
scalar loss and a dict of statistics with "active_fraction" out), say what it
needs in `NEEDS`, and register it with `@register_loss("name")`. Nothing else
changes: `model.compile(loss=...)`, `get_loss("name")`, `--loss name` in
`train.py` (once the module is imported) and `keras.saving.load_model` find it.

The loss here is a soft contrastive loss: softplus(d - pos_margin) pulls
each positive pair together, softplus(neg_margin - d) pushes each negative
pair apart, with d from the loss's distance part (Euclidean by default; give
`distance="cosine"` or any `tfdnc.distances.Distance`).

Run it: `python docs/examples/own_loss.py` (about a minute on a CPU).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfdnc.backbones import build_backbone
from tfdnc.losses import Batch, LossNeeds, MetricLoss, get_loss, register_loss
from tfdnc.miners import label_masks
from tfdnc.model import DivideAndConquerModel


@register_loss("soft_contrastive", package="my_project")
class SoftContrastiveLoss(MetricLoss):
    """softplus(d - pos_margin) over positive pairs + softplus(neg_margin - d) over negative pairs, averaged.

    Args:
        pos_margin, neg_margin: where the pull and the push fade out.
        distance, symmetrical, reducer, name: see `MetricLoss`.
    """

    # Unit-norm embeddings; a second image of a class and another class in every batch;
    # no fact of the run (number of classes, embedding size, learners) needed.
    NEEDS = LossNeeds(normalized=True, positives=True, negatives=True)

    def __init__(self, pos_margin: float = 0.2, neg_margin: float = 1.0, name: str = "soft_contrastive", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0 <= pos_margin < neg_margin:
            raise ValueError(f"SoftContrastiveLoss: need 0 <= pos_margin < neg_margin, got {pos_margin}, {neg_margin}")
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)

    def compute(self, batch: Batch):
        d = self.distance(batch.embeddings)  # (B, B), the loss's distance part
        positive, negative = label_masks(batch.labels)  # (B, B) bool each, the diagonal in neither
        pos, neg = tf.cast(positive, tf.float32), tf.cast(negative, tf.float32)
        pull = tf.math.softplus(d - self.pos_margin) * pos
        push = tf.math.softplus(self.neg_margin - d) * neg
        loss = tf.reduce_sum(pull) / tf.maximum(tf.reduce_sum(pos), 1.0) + \
            tf.reduce_sum(push) / tf.maximum(tf.reduce_sum(neg), 1.0)
        violated = tf.cast(positive & (d > self.pos_margin), tf.float32) + \
            tf.cast(negative & (d < self.neg_margin), tf.float32)
        active = tf.reduce_sum(violated) / tf.maximum(tf.reduce_sum(pos + neg), 1.0)
        return loss, {"active_fraction": active}

    def get_config(self) -> dict:
        return {**super().get_config(), "pos_margin": self.pos_margin, "neg_margin": self.neg_margin}


def tiny_data(classes: int = 8, per_class: int = 8, size: int = 16, seed: int = 0):
    """Images (N, size, size, 1) in [0, 255]: each class a bright block at its own place, plus noise."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(classes):
        row, col = divmod(c, 4)
        for _ in range(per_class):
            image = rng.uniform(0, 60, (size, size, 1))
            image[row * 8:row * 8 + 6, col * 4:col * 4 + 4] += 180
            images.append(image)
            labels.append(c)
    return np.clip(np.stack(images), 0, 255).astype("float32"), np.array(labels, "int32")


def main(epochs: int = 6) -> list[float]:
    keras.utils.set_random_seed(0)
    x, y = tiny_data()
    model = DivideAndConquerModel(build_backbone("small_cnn", x.shape[1:], width=8), embedding_dim=16, k_final=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss("soft_contrastive", neg_margin=1.2))
    history = model.fit(x, y, epochs=epochs, batch_size=16, images_per_class=4, verbose=0)
    losses = [float(v) for v in history.history["metric_loss"]]
    print("metric loss per epoch:", " ".join(f"{v:.4f}" for v in losses))
    assert losses[-1] < losses[0], f"the loss did not decrease: {losses}"
    return losses


if __name__ == "__main__":
    main()
