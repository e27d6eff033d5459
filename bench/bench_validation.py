"""Image validation speed: tf.data map vs a thread pool vs one by one; cold vs cached.

Writes N photo-like JPEGs (300 x 300 by default, about a Stanford Online
Products image), then times checking all of them:

- `validate_splits` cold (tf.data map, AUTOTUNE parallel calls, and 1 call);
- the same decoder (`decode_image`) called eagerly from a thread pool, and
  serially (the alternative way to parallelise);
- the old Pillow check (verify + load per file, 8 threads), for reference;
- `validate_splits` again with its cache file (nothing changed), and after
  touching 1% of the files.

    python bench/bench_validation.py [--n 5000] [--size 300 300] [--threads 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tfdnc.data.validation import validate_splits  # noqa: E402
from tfdnc.datasets.base import DataSplits, ImageSet  # noqa: E402


def write_jpegs(folder: str, n: int, size: tuple[int, int]) -> list[str]:
    rng = np.random.default_rng(0)
    height, width = size
    ramp = np.linspace(0, 1, width)[None, :, None] * np.linspace(0, 1, height)[:, None, None]
    paths = []
    for i in range(n):
        colour = rng.integers(0, 256, 3)
        pixels = np.clip(ramp * colour + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"{i // 50:04d}", f"{i:06d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def eager_check(path: str) -> bool:
    import tensorflow as tf

    from tfdnc.data.transforms import decode_image

    try:
        decode_image(tf.io.read_file(path), 3)
        return True
    except tf.errors.OpError:
        return False


def pillow_check(path: str) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:  # noqa: BLE001 - the old check's semantics
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--size", type=int, nargs=2, default=(300, 300), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        paths = write_jpegs(folder, args.n, tuple(args.size))
        print(f"wrote {args.n} JPEGs of {args.size[0]} x {args.size[1]} in {time.perf_counter() - start:.1f} s; "
              f"{os.cpu_count()} CPUs")
        image_set = ImageSet(labels=np.arange(args.n) // 50, paths=paths, name="bench")
        splits = DataSplits(train=image_set, test=image_set)  # same files: checked once
        eager_check(paths[0])  # load TensorFlow and its decoders before timing
        validate_splits(DataSplits(train=image_set.subset(np.arange(4)), test=image_set.subset(np.arange(4))))

        rows = []
        rows.append(("validate_splits, tf.data AUTOTUNE, cold", timed(lambda: validate_splits(splits))))
        rows.append(("validate_splits, tf.data 1 call, cold", timed(lambda: validate_splits(splits, workers=1))))
        with ThreadPoolExecutor(args.threads) as pool:
            rows.append((f"decode_image eager, {args.threads} threads",
                         timed(lambda: list(pool.map(eager_check, paths)))))
        rows.append(("decode_image eager, serial", timed(lambda: [eager_check(p) for p in paths])))
        with ThreadPoolExecutor(args.threads) as pool:
            rows.append((f"old Pillow check, {args.threads} threads",
                         timed(lambda: list(pool.map(pillow_check, paths)))))
        cache = os.path.join(folder, "image_check.json")
        rows.append(("validate_splits, cache file written (cold)",
                     timed(lambda: validate_splits(splits, cache_path=cache))))
        rows.append(("validate_splits, cache file, nothing changed",
                     timed(lambda: validate_splits(splits, cache_path=cache))))
        for path in paths[:: 100]:
            os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
        rows.append(("validate_splits, cache file, 1% touched",
                     timed(lambda: validate_splits(splits, cache_path=cache))))
        print(f"{'check of ' + str(args.n) + ' files':48s} {'seconds':>8s} {'files/s':>9s}")
        for name, seconds in rows:
            print(f"{name:48s} {seconds:8.2f} {args.n / seconds:9.0f}")


if __name__ == "__main__":
    main()
