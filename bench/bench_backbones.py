"""A small ViT (KerasHub, through `--backbone hub:FOLDER`) against small_cnn at the same image size, on CPU.

Both backbones go into the same `DivideAndConquerModel` (embedding head, K = 2
learnable masks, multi-similarity loss with Symmetrical Synthesis, Adam) and
see the same batches. Measured per round, the two models alternating so that
load on a shared machine hits both alike:

- train step: milliseconds per `fit` step (after a warm-up round);
- embedding throughput: images per second of the compiled inference call
  (`model.predict_on_batch` on a batch of `--embed-batch`, `--embed-calls` times).

Medians over the rounds are reported. The ViT is randomly initialised and
written as a KerasHub preset folder first (nothing is downloaded).

    python bench/bench_backbones.py [--image-size 32 --batch 32 --embed-batch 128 --rounds 7 --steps 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfdnc.backbones import build_backbone  # noqa: E402
from tfdnc.losses import get_loss  # noqa: E402
from tfdnc.model import DivideAndConquerModel  # noqa: E402


def make_model(backbone: keras.Model, dim: int) -> DivideAndConquerModel:
    model = DivideAndConquerModel(backbone, embedding_dim=dim, k_final=2, initial_k=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=get_loss("multi_similarity", symmetrical=True))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32, help="images per train step (classes x 2)")
    parser.add_argument("--embed-batch", type=int, default=128)
    parser.add_argument("--embed-calls", type=int, default=3, help="inference calls per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="train steps per round")
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--mlp-ratio", type=int, default=2, help="MLP width / hidden size (ViT-S/16: 4)")
    parser.add_argument("--mixed-precision", default=None, help="e.g. mixed_bfloat16 or mixed_float16 (a GPU run)")
    args = parser.parse_args()
    if args.mixed_precision:
        keras.config.set_dtype_policy(args.mixed_precision)
    keras.utils.set_random_seed(0)
    load_before = os.getloadavg()[0]
    size = args.image_size
    folder = os.path.join(tempfile.mkdtemp(), "small_vit")
    vit = keras_hub.models.ViTBackbone(image_shape=(size, size, 3), patch_size=args.patch, num_layers=args.layers,
                                       num_heads=args.heads, hidden_dim=args.hidden,
                                       mlp_dim=args.mlp_ratio * args.hidden)
    vit.save_to_preset(folder)
    backbones = {
        "small_cnn": build_backbone("small_cnn", (size, size, 3)),
        f"ViT {args.layers} x {args.hidden}, patch {args.patch}": build_backbone("hub:" + folder, (size, size, 3)),
    }
    models = {name: make_model(b, 64) for name, b in backbones.items()}
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (args.batch, size, size, 3)).astype("float32")
    labels = np.repeat(np.arange(args.batch // 2, dtype="int32"), 2)
    data = tf.data.Dataset.from_tensors(({"images": images, "cluster": np.ones(args.batch, "int32")}, labels)).repeat()
    embed_images = rng.uniform(0, 255, (args.embed_batch, size, size, 3)).astype("float32")
    step_ms = {name: [] for name in models}
    throughput = {name: [] for name in models}
    for round_ in range(args.rounds + 1):  # round 0 warms up (tracing)
        for name, model in models.items():
            start = time.perf_counter()
            model.fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0)
            step = (time.perf_counter() - start) / args.steps * 1000
            start = time.perf_counter()
            for _ in range(args.embed_calls):
                model.predict_on_batch(embed_images)
            rate = args.embed_batch * args.embed_calls / (time.perf_counter() - start)
            if round_:
                step_ms[name].append(step)
                throughput[name].append(rate)
    print(f"image {size} px, train batch {args.batch}, embed batch {args.embed_batch} x {args.embed_calls}, "
          f"{args.rounds} rounds x {args.steps} steps (medians); "
          f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("| backbone | parameters | features | train step (ms) | embedding (images/s) |")
    print("|---|---|---|---|---|")
    for name, model in models.items():
        print(f"| {name} | {backbones[name].count_params():,} | {backbones[name].output_shape[-1]} | "
              f"{np.median(step_ms[name]):.1f} | {np.median(throughput[name]):.0f} |")


if __name__ == "__main__":
    main()
