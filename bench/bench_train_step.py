"""Divide & Conquer train step vs a plain single-learner step, side by side.

Both models share the backbone architecture, the embedding head, the loss
(margin loss with distance-weighted sampling) and the batch; the D&C model
has K = 8 learnable masks and adds the mask loss and the second optimizer.
Steps of the two are interleaved so that load on the machine hits both alike.

    python bench/bench_train_step.py [--backbone small_cnn --image-size 32 --batch 80 --steps 30]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfdnc.backbones import build_backbone  # noqa: E402
from tfdnc.utils.arrays import l2_normalize_tensor as l2_normalize  # noqa: E402
from tfdnc.losses import MarginLoss  # noqa: E402
from tfdnc.model import DivideAndConquerModel  # noqa: E402


class PlainMetricModel(keras.Model):
    """The baseline: one learner on the full embedding, one optimizer."""

    def __init__(self, backbone, embedding_dim, loss):
        super().__init__()
        self.backbone = backbone
        self.head = keras.layers.Dense(embedding_dim)
        self.metric_loss = loss
        self.tracker = keras.metrics.Mean(name="loss")

    def call(self, images, training=False):
        return l2_normalize(self.head(self.backbone(images, training=training)))

    def train_step(self, data):
        x, labels = data
        with tf.GradientTape() as tape:
            loss, _ = self.metric_loss.compute_loss_and_stats(labels, self(x["images"], training=True))
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        self.tracker.update_state(loss)
        return {"loss": self.tracker.result()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=80)
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--jit-compile", action="store_true")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    shape = (args.image_size, args.image_size, 3)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, size=(args.batch, *shape)).astype("float32"))
    labels = tf.constant(np.repeat(np.arange(args.batch // 4), 4).astype("int32"))

    dnc = DivideAndConquerModel(build_backbone(args.backbone, shape), embedding_dim=args.embedding_dim,
                                k_max=args.k, mask_mode="learnable", loss=MarginLoss())
    dnc.compile(optimizer=keras.optimizers.Adam(1e-5), jit_compile=args.jit_compile)
    while dnc.num_learners < args.k:
        dnc.masks.grow()
    plain = PlainMetricModel(build_backbone(args.backbone, shape), args.embedding_dim, MarginLoss())
    plain.compile(optimizer=keras.optimizers.Adam(1e-5), jit_compile=args.jit_compile)

    def batch(step):
        return {"images": images, "cluster": tf.fill([args.batch], step % args.k)}, labels

    dnc.make_train_function()
    plain.make_train_function()
    dnc_step, plain_step = dnc.train_function, plain.train_function
    timings = {"plain": [], "dnc": []}
    for step in range(args.steps + 3):
        order = (("plain", plain_step), ("dnc", dnc_step))
        for name, fn in order if step % 2 else order[::-1]:  # alternate who goes first
            start = time.perf_counter()
            logs = fn(iter([batch(step)]))
            float(logs["loss"])  # wait for the step
            if step >= 3:  # the first steps trace and compile
                timings[name].append(time.perf_counter() - start)

    plain_ms = 1000 * np.median(timings["plain"])
    dnc_ms = 1000 * np.median(timings["dnc"])
    print(f"backbone={args.backbone} image={args.image_size} batch={args.batch} d={args.embedding_dim} "
          f"K={args.k} steps={args.steps} jit_compile={args.jit_compile}")
    print(f"| step | median ms | p90 ms | ratio |")
    print(f"|---|---|---|---|")
    print(f"| plain single learner | {plain_ms:.1f} | {1000 * np.percentile(timings['plain'], 90):.1f} | 1.00 |")
    print(f"| D&C, K={args.k} learnable masks | {dnc_ms:.1f} | {1000 * np.percentile(timings['dnc'], 90):.1f} "
          f"| {dnc_ms / plain_ms:.3f} |")


if __name__ == "__main__":
    main()
