"""Speed options side by side: train-step time with mixed precision and XLA, and input throughput.

    python bench/bench_speed.py                          # small_cnn, 64x64x3, batch 64 (CPU-sized)
    python bench/bench_speed.py --backbone resnet50 --image-size 224 --batch 64   # on a GPU

Every variant trains the same model on the same fixed batch (so the input
pipeline is out of the timing); the input pipeline is timed on its own
(batches/s of `make_train_dataset`), to show whether it keeps the step fed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = (
    ("float32", None, False),
    ("float32 + XLA", None, True),
    ("mixed_bfloat16", "mixed_bfloat16", False),
    ("mixed_bfloat16 + XLA", "mixed_bfloat16", True),
    ("mixed_float16", "mixed_float16", False),
    ("mixed_float16 + XLA", "mixed_float16", True),
)


def step_time(args, policy, jit) -> float:
    import keras

    from tfdnc.backbones import build_backbone
    from tfdnc.losses import get_loss
    from tfdnc.model import DivideAndConquerModel

    keras.mixed_precision.set_global_policy(policy or "float32")
    try:
        keras.utils.set_random_seed(0)
        shape = (args.image_size, args.image_size, 3)
        backbone = build_backbone(args.backbone, shape, **({"width": args.width} if args.backbone == "small_cnn" else {}))
        model = DivideAndConquerModel(backbone, embedding_dim=128, k_max=4, loss=get_loss(args.loss))
        model.masks.set_num_active(4)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=jit)
        rng = np.random.default_rng(0)
        x = {"images": rng.uniform(0, 255, size=(args.batch,) + shape).astype("float32"),
             "cluster": np.ones(args.batch, "int32")}
        y = np.repeat(np.arange(args.batch // 8), 8).astype("int32")
        for _ in range(args.warmup):
            model.train_on_batch(x, y)
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            model.train_on_batch(x, y)
            times.append(time.perf_counter() - t)
        return float(np.median(times))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def input_rate(args) -> float:
    from tfdnc.data.pipeline import make_train_dataset
    from tfdnc.data.sampling import ClusterBatchSampler
    from tfdnc.datasets.base import ImageSet

    rng = np.random.default_rng(0)
    n = 4096
    # Stored larger than the crop, as decoded photos are.
    images = rng.integers(0, 256, size=(n, args.image_size * 2, args.image_size * 2, 3), dtype=np.uint8)
    labels = np.arange(n) % 256
    sampler = ClusterBatchSampler(labels, args.batch // 8, 8)
    steps = args.steps * 4
    dataset = make_train_dataset(ImageSet(images=images, labels=labels), sampler, steps, args.image_size)
    sampler.publish(0)
    iterator = iter(dataset)
    next(iterator)
    t = time.perf_counter()
    for _ in range(steps - 1):
        next(iterator)
    seconds = time.perf_counter() - t
    sampler.close()
    return (steps - 1) / seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="small_cnn")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--loss", default="margin")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=[v[0] for v in VARIANTS])
    args = p.parse_args(argv)
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    print(f"# {platform.machine()}, {os.cpu_count()} CPU cores, GPUs: {[g.name for g in gpus] or 'none'}; "
          f"{args.backbone} {args.image_size}x{args.image_size}x3, batch {args.batch}, {args.loss} loss")
    print(f"{'variant':<22} {'ms/step':>8} {'vs float32':>10}")
    base = None
    for name, policy, jit in VARIANTS:
        if name not in args.variants:
            continue
        try:
            ms = 1000 * step_time(args, policy, jit)
        except Exception as exc:  # noqa: BLE001 - a variant the device cannot run is reported, not fatal
            print(f"{name:<22} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
            continue
        base = base or ms
        print(f"{name:<22} {ms:>8.1f} {base / ms:>9.2f}x", flush=True)
    rate = input_rate(args)
    print(f"\ninput pipeline (make_train_dataset, in-memory {args.image_size * 2}px images -> random resized crop): "
          f"{rate:.1f} batches/s = {1000 / rate:.1f} ms/batch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
