"""Input pipeline throughput: decoding JPEGs every epoch vs the decoded-image cache.

Writes N synthetic photo-like JPEGs (500 x 375 by default, the size of a
typical CUB image), then times the real training pipeline (`make_train_dataset`: decode,
RandomResizedCrop to 224, flip, batch) over the originals and over
`cache_decoded_images` output, alternating, best of three rounds each.

    python bench/bench_input.py [--n 400] [--batch 32] [--size 1600 1200] [--max-side 256]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-side", type=int, default=None, help="cache_decoded_images(max_side=...)")
    parser.add_argument("--size", type=int, nargs=2, default=(500, 375), help="JPEG width and height")
    args = parser.parse_args()
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
