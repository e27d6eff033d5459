"""tf.data pipelines: per-cluster training batches and evaluation batches."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfdnc.data.cache import decode_raw_image, is_cached
from tfdnc.data.sampling import ClusterBatchSampler
from tfdnc.data.transforms import crop_to_box, decode_image, eval_transform, random_flip, random_resized_crop
from tfdnc.datasets.base import ImageSet


def image_channels(image_set: ImageSet) -> int:
    """Channels of the images (read from the array, or 3 for files)."""
    return int(image_set.images.shape[-1]) if image_set.images is not None else 3


def image_loader(image_set: ImageSet, channels: int):
    """Returns index -> uint8 image tensor (H, W, C), cropped to its box if any."""
    if image_set.images is not None:
        images = tf.constant(image_set.images)

        def load(index):
            image = tf.gather(images, index)
            return image
    else:
        paths = tf.constant(image_set.paths)
        decode = decode_raw_image if is_cached(image_set) else decode_image

        def load(index):
            return decode(tf.io.read_file(tf.gather(paths, index)), channels)

    if image_set.boxes is None:
        return load
    boxes = tf.constant(image_set.boxes)
    return lambda index: crop_to_box(load(index), tf.gather(boxes, index))


def make_train_dataset(
    image_set: ImageSet,
    sampler: ClusterBatchSampler,
    steps_per_epoch: int,
    image_size: int,
    labels: np.ndarray | None = None,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    wait_timeout: float | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    first_epoch_timeout: float | None = 120.0,
) -> tf.data.Dataset:
    """An endless dataset of per-cluster, class-balanced training batches.

    Elements: `({"images": float32 (B, S, S, C) in [0, 255], "cluster": int32
    (B,)}, labels int32 (B,))`. Each epoch's `steps_per_epoch` batches are
    planned only once the sampler publishes that epoch (the schedule callback
    does so in `on_epoch_begin`), so re-clustering takes effect exactly at
    the epoch boundary. Augmentation seeds come from the plan, so a resumed
    run repeats the same crops.

    Args:
        image_set: the training images.
        sampler: plans which indices form each batch.
        steps_per_epoch: batches per epoch (pass the same value to `fit`).
        image_size: side of the square training crop.
        labels: training labels for the loss (default: `image_set.labels`);
            pass contiguous ids when the loss has per-class parameters.
        crop_scale, crop_ratio: RandomResizedCrop ranges.
        flip: random horizontal flips.
        wait_timeout: seconds to wait for an epoch to be published before
            failing (None: wait, printing a line every 10 minutes).
        first_epoch_timeout: seconds to wait for the *first* epoch: without
            a `DivideAndConquerSchedule` in `fit`'s callbacks nobody publishes
            it, and iterating fails after this long with an error saying so
            instead of waiting forever. None: wait (e.g. when the schedule's
            first clustering, with growth "fixed", takes longer).
        num_shards, shard_index: yield only part `shard_index` of
            `num_shards` equal contiguous parts of every batch (one
            worker's share of the global batch; all parts of a step come
            from the same plan, hence the same cluster).

    The plan generator blocks between epochs until the next one is
    published; `DivideAndConquerSchedule` closes the sampler at the end of
    `fit` so the iterator can shut down. Iterating the dataset by hand, call
    `sampler.close()` before dropping the iterator.

    (Over 60 lines only by this docstring: the body is three named steps,
    `_batch_plans`, then `_whole_image_batches` or `_augmented_batches`.)
    """
    if steps_per_epoch < 1:
        raise ValueError(f"make_train_dataset: `steps_per_epoch` must be >= 1, got {steps_per_epoch}")
    if num_shards < 1 or not 0 <= shard_index < num_shards or sampler.batch_size % num_shards:
        raise ValueError(
            f"make_train_dataset: the batch ({sampler.batch_size}) must split into `num_shards` ({num_shards}) "
            f"equal parts and `shard_index` ({shard_index}) must be in [0, {num_shards})"
        )
    batch_size = sampler.batch_size // num_shards
    label_table = tf.constant(np.asarray(image_set.labels if labels is None else labels, dtype=np.int32))
    plan = _batch_plans(sampler, steps_per_epoch, slice(shard_index * batch_size, (shard_index + 1) * batch_size),
                        wait_timeout, first_epoch_timeout)
    spec = (
        tf.TensorSpec((None, batch_size), tf.int32),
        tf.TensorSpec((None, batch_size), tf.int32),
        tf.TensorSpec((None, batch_size, 2), tf.int32),
    )
    # One generator call per epoch, split into batches in C++: a from_generator call per batch made the
    # pipeline cost 1.1 ms of CPU per batch, now 0.45 (bench/bench_step_parts.py --parts input), about
    # 1.7 % of a suite step.
    dataset = tf.data.Dataset.from_generator(plan, output_signature=spec).unbatch()
    if unaugmented_in_memory(image_set, image_size, crop_scale, crop_ratio, flip):
        return _whole_image_batches(dataset, image_set, label_table)
    return _augmented_batches(dataset, image_set, label_table, batch_size, image_size, crop_scale, crop_ratio, flip)


def _batch_plans(sampler: ClusterBatchSampler, steps_per_epoch: int, part: slice,
                 wait_timeout: float | None, first_epoch_timeout: float | None):
    """The generator function of (indices, cluster ids, augmentation seeds) per epoch, one row per batch:
    one shard's `part` of each planned batch, epoch after epoch as the sampler publishes them (returns
    once it is closed)."""

    def plan():
        epoch = -1
        while True:
            timeout = wait_timeout
            if epoch < 0 and first_epoch_timeout is not None:
                timeout = first_epoch_timeout if timeout is None else min(timeout, first_epoch_timeout)
            epoch = sampler.wait_for_epoch_after(epoch, timeout=timeout)
            if epoch is None:
                return
            rng = np.random.default_rng([sampler.seed, epoch, 1])
            size = part.stop - part.start
            indices, clusters, seeds = [], [], []
            for batch, cluster in sampler.plan_epoch(epoch, steps_per_epoch):
                # drawn batch by batch, as before, so a seed's crops do not change
                batch_seeds = rng.integers(0, 2**31 - 1, size=(sampler.batch_size, 2), dtype=np.int64)
                indices.append(batch[part])
                clusters.append(np.full(size, cluster, np.int32))
                seeds.append(batch_seeds[part])
            yield (np.asarray(indices, np.int32), np.asarray(clusters, np.int32), np.asarray(seeds, np.int32))

    return plan


def _whole_image_batches(dataset: tf.data.Dataset, image_set: ImageSet, label_table: tf.Tensor) -> tf.data.Dataset:
    """Planned batches of in-memory images taken whole (see `unaugmented_in_memory`)."""
    # The crop is the whole image at its own size, which the per-image transform returns unchanged (as
    # float32): one gather per batch instead of 32 per-image map calls (2.4 -> 0.5 ms of CPU per batch
    # of 32 images of 32 px, bench/bench_input.py --suite; docs/bench/suite.md, "Speed").
    images = tf.constant(image_set.images)

    def whole(index, cluster, seed):
        return {"images": tf.cast(tf.gather(images, index), tf.float32), "cluster": cluster}, \
            tf.gather(label_table, index)

    return dataset.map(whole).prefetch(2)


def _augmented_batches(dataset: tf.data.Dataset, image_set: ImageSet, label_table: tf.Tensor, batch_size: int,
                       image_size: int, crop_scale, crop_ratio, flip: bool) -> tf.data.Dataset:
    """Planned batches read, decoded and augmented image by image (crop, flip), seeded by the plan."""
    channels = image_channels(image_set)
    load = image_loader(image_set, channels)

    whole = _whole_area(crop_scale, crop_ratio)

    def augment(index, cluster, seed):
        if whole:
            # The whole image as the evaluation sees it (shorter side resized, centre crop): a crop of
            # all the area at aspect 1 does not exist in a non-square image, and the random crop's
            # fallback would squash it to a square.
            image = eval_transform(load(index), image_size)
        else:
            image = random_resized_crop(load(index), image_size, seed, crop_scale, crop_ratio)
        if flip:
            image = random_flip(image, seed + 1)
        image.set_shape([image_size, image_size, channels])
        return image, cluster, tf.gather(label_table, index)

    dataset = dataset.unbatch().map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.map(lambda images, cluster, labels: ({"images": images, "cluster": cluster}, labels))
    return dataset.prefetch(2)


def unaugmented_in_memory(image_set: ImageSet, image_size: int, crop_scale, crop_ratio, flip: bool) -> bool:
    """Whether training sees each in-memory image whole and unchanged: square `image_size` images without
    boxes, crops of the whole area at aspect 1 (`crop_scale` = `crop_ratio` = (1, 1)) and no flips."""
    if image_set.images is None or image_set.boxes is not None or flip:
        return False
    return _whole_area(crop_scale, crop_ratio) and tuple(image_set.images.shape[1:3]) == (image_size, image_size)


def _whole_area(crop_scale, crop_ratio) -> bool:
    """Whether the crop ranges ask for the whole image at aspect 1 (no random crop)."""
    return tuple(float(v) for v in crop_scale) == (1.0, 1.0) and tuple(float(v) for v in crop_ratio) == (1.0, 1.0)


def make_eval_dataset(
    image_set: ImageSet,
    image_size: int,
    resize_size: int | None = None,
    batch_size: int = 128,
    with_labels: bool = False,
) -> tf.data.Dataset:
    """Images in order under the evaluation transform (resize, centre crop)."""
    channels = image_channels(image_set)
    load = image_loader(image_set, channels)

    def transform(index):
        image = eval_transform(load(index), image_size, resize_size)
        image.set_shape([image_size, image_size, channels])
        return image

    dataset = tf.data.Dataset.range(len(image_set)).map(
        lambda i: tf.cast(i, tf.int32), num_parallel_calls=tf.data.AUTOTUNE
    )
    images = dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if with_labels:
        labels = tf.data.Dataset.from_tensor_slices(image_set.labels.astype(np.int32))
        images = tf.data.Dataset.zip((images, labels))
    return images.batch(batch_size).prefetch(tf.data.AUTOTUNE)
