"""A decoded-image cache: decode each training image once, read raw pixels every epoch.

JPEG decoding can starve a training step on CPU hosts. The cache decodes every
image once with TensorFlow's own decoder (cropped to its bounding box if it has
one, optionally shrunk) and writes its pixels uncompressed, behind a 12-byte
(height, width, channels) header. Reading such a file back is a copy, it stays
in core TensorFlow ops, and the augmentation sees exactly the pixels it would
have decoded.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tfdnc.datasets.base import ImageSet
from tfdnc.utils.atomic import atomic_open

RAW_SUFFIX = ".tfdncraw"


def is_cached(image_set: ImageSet) -> bool:
    """True when every path of `image_set` is a cache file."""
    return image_set.paths is not None and all(p.endswith(RAW_SUFFIX) for p in image_set.paths)


def decode_raw_image(contents, channels: int):
    """Pixels of a cache file's contents, uint8 (H, W, channels)."""
    import tensorflow as tf

    shape = tf.io.decode_raw(tf.strings.substr(contents, 0, 12), tf.int32)
    image = tf.reshape(tf.io.decode_raw(tf.strings.substr(contents, 12, -1), tf.uint8), shape)
    image.set_shape([None, None, channels])
    return image


def _cache_name(index: int, path: str, box, max_side: int | None, channels: int) -> str:
    stamp = os.path.getmtime(path) if os.path.exists(path) else 0
    key = f"{os.path.abspath(path)}|{stamp}|{box}|{max_side}|{channels}"
    return f"{index:08d}-{hashlib.sha1(key.encode()).hexdigest()[:16]}{RAW_SUFFIX}"


def _decode_to_raw(source: str, target: str, box, max_side: int | None, channels: int) -> None:
    import tensorflow as tf

    from tfdnc.data.transforms import crop_to_box, decode_image

    image = decode_image(tf.io.read_file(source), channels)
    if box is not None:
        image = crop_to_box(image, tf.constant(box, tf.float32))
    height, width = int(image.shape[0]), int(image.shape[1])
    if max_side is not None and min(height, width) > max_side:
        scale = max_side / min(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        image = tf.cast(tf.round(tf.image.resize(image, size, antialias=True)), tf.uint8)
    pixels = np.ascontiguousarray(image.numpy())
    # A rebuildable cache: no fsync per image, but never half a file.
    with atomic_open(target, "wb", fsync=False) as f:
        f.write(np.array(pixels.shape, "<i4").tobytes())
        f.write(pixels.tobytes())


def cache_decoded_images(
    image_set: ImageSet,
    cache_dir: str,
    max_side: int | None = None,
    channels: int = 3,
    workers: int = 8,
) -> ImageSet:
    """Decodes `image_set` once into `cache_dir`; returns the set read from there.

    Files already cached (same source path, modification time, box,
    `max_side` and channels) are reused, so a resumed run or a second run on
    the same data decodes nothing. In-memory image sets are returned unchanged.

    Args:
        image_set: a file-based image set (JPEG/PNG/... paths).
        cache_dir: folder for the decoded files (H x W x channels bytes each).
        max_side: shrink images whose shorter side is larger than this
            (None: keep full resolution, so crops are exactly as without the
            cache).
        channels: channels to decode to, as the pipeline does.
        workers: decoding threads.

    Examples:
        >>> train = cache_decoded_images(splits.train, "/scratch/cub-cache")  # doctest: +SKIP
        >>> dataset = make_train_dataset(train, sampler, steps, 224)  # doctest: +SKIP
    """
    if image_set.paths is None or is_cached(image_set):
        return image_set
    if max_side is not None and max_side < 1:
        raise ValueError(f"cache_decoded_images: `max_side` must be >= 1, got {max_side}")
    os.makedirs(cache_dir, exist_ok=True)
    boxes = image_set.boxes if image_set.boxes is not None else [None] * len(image_set)
    targets = [
        os.path.join(cache_dir, _cache_name(i, p, None if b is None else tuple(np.round(b, 2)), max_side, channels))
        for i, (p, b) in enumerate(zip(image_set.paths, boxes))
    ]

    def work(i: int) -> None:
        if not os.path.exists(targets[i]):
            try:
                _decode_to_raw(image_set.paths[i], targets[i], boxes[i], max_side, channels)
            except Exception as exc:  # noqa: BLE001 - re-raised naming the file
                raise ValueError(f"cannot decode image {image_set.paths[i]!r} into the cache: {exc}") from exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, range(len(targets))))
    return ImageSet(labels=image_set.labels, paths=targets, boxes=None, name=image_set.name,
                    extra=dict(image_set.extra))
