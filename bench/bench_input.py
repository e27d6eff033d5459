"""Input pipeline throughput: decoding JPEGs every epoch vs the decoded-image cache.

Writes N synthetic photo-like JPEGs (500 x 375 by default, the size of a
typical CUB image), then times the real training pipeline (`make_train_dataset`: decode,
RandomResizedCrop to 224, flip, batch) over the originals and over
`cache_decoded_images` output, alternating, best of three rounds each.

    python bench/bench_input.py [--n 400] [--batch 32] [--size 1600 1200] [--max-side 256]

`--suite` measures instead the benchmark suite's input (shapes in memory, 32 px, P x M = 4 x 8, no
augmentation): CPU and wall milliseconds per batch of the whole-batch gather that such runs take and of
the per-image crop transform they took before (identical pixels), one intra-op thread, best of three.

    python bench/bench_input.py --suite [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tfdnc.data.cache import cache_decoded_images  # noqa: E402
from tfdnc.data.pipeline import make_train_dataset  # noqa: E402
from tfdnc.data.sampling import ClusterBatchSampler  # noqa: E402
from tfdnc.datasets.base import ImageSet  # noqa: E402


def images_per_second(image_set: ImageSet, batch_classes: int, steps: int) -> float:
    sampler = ClusterBatchSampler(image_set.labels, batch_classes, 4)
    dataset = make_train_dataset(image_set, sampler, steps, 224)
    sampler.publish(0)
    iterator = iter(dataset)
    next(iterator)  # start-up
    start = time.perf_counter()
    for _ in range(steps - 1):
        next(iterator)
    seconds = time.perf_counter() - start
    sampler.close()
    return (steps - 1) * sampler.batch_size / seconds


def suite_input(steps: int) -> None:
    """CPU / wall ms per batch of the suite's unaugmented in-memory input, whole batches vs per-image crops."""
    import tensorflow as tf

    import tfdnc.data.pipeline as pipeline
    from tfdnc.datasets import load_dataset

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    train = load_dataset("shapes").train
    whole = pipeline.unaugmented_in_memory
    rows = {}
    for _ in range(3):
        for name, fast in (("per-image crop transform (before)", False), ("whole-batch gather", True)):
            pipeline.unaugmented_in_memory = whole if fast else (lambda *a, **k: False)
            sampler = ClusterBatchSampler(train.labels, 4, 8, seed=0)
            dataset = make_train_dataset(train, sampler, steps, 32, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                                         flip=False)
            sampler.publish(0)
            iterator = iter(dataset)
            for _ in range(20):
                next(iterator)
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(steps - 20):
                next(iterator)
            sampler.close()
            ms = (1000 * (time.process_time() - cpu) / (steps - 20), 1000 * (time.perf_counter() - wall) / (steps - 20))
            rows[name] = min(rows.get(name, ms), ms)
    pipeline.unaugmented_in_memory = whole
    print(f"shapes (32 px, in memory), batches of 32, no augmentation, {steps - 20} batches, best of 3; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| input | CPU ms / batch | wall ms / batch |")
    print("|---|---|---|")
    for name, (cpu_ms, wall_ms) in rows.items():
        print(f"| {name} | {cpu_ms:.2f} | {wall_ms:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="batches (default: 20; with --suite 300)")
    parser.add_argument("--max-side", type=int, default=None, help="cache_decoded_images(max_side=...)")
    parser.add_argument("--size", type=int, nargs=2, default=(500, 375), help="JPEG width and height")
    parser.add_argument("--suite", action="store_true", help="the suite's in-memory input instead (see above)")
    args = parser.parse_args()
    if args.suite:
        suite_input(args.steps or 300)
        return
    args.steps = args.steps or 20
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        paths = []
        base = rng.integers(0, 256, size=(25, 25, 3), dtype=np.uint8)
        for i in range(args.n):
            # Smooth, photo-like content (a JPEG of pure noise decodes atypically slowly).
            image = Image.fromarray(np.roll(base, i, axis=1)).resize(tuple(args.size), Image.BICUBIC)
            path = os.path.join(root, f"{i}.jpg")
            image.save(path, quality=90)
            paths.append(path)
        original = ImageSet(labels=np.arange(args.n) % 20, paths=paths, name="jpeg")
        start = time.perf_counter()
        cached = cache_decoded_images(original, os.path.join(root, "cache"), max_side=args.max_side)
        cache_seconds = time.perf_counter() - start
        rates: dict[str, float] = {}
        for _ in range(3):
            for name, image_set in (("JPEG decoded every epoch", original), ("decoded-image cache", cached)):
                rate = images_per_second(image_set, args.batch // 4, args.steps)
                rates[name] = max(rates.get(name, 0.0), rate)
    print(f"{args.n} JPEGs of {args.size[0]} x {args.size[1]}, RandomResizedCrop 224, batch {args.batch}; "
          f"cache max_side {args.max_side}; building the cache took {cache_seconds:.1f} s")
    print("| pipeline | images/s | ratio |")
    print("|---|---|---|")
    reference = rates["JPEG decoded every epoch"]
    for name, rate in rates.items():
        print(f"| {name} | {rate:.0f} | {rate / reference:.2f} |")


if __name__ == "__main__":
    main()
