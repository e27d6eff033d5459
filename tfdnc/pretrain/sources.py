"""Unlabelled inputs for pretraining: a registered data set's train split, or a folder."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfdnc.data.transforms import decode_image, eval_transform
from tfdnc.utils import list_image_files

def find_images(data_dir: str) -> list[str]:
    """Every image file under `data_dir` (recursively), sorted; labels are ignored."""
    try:
        return list_image_files(data_dir, what="--data-dir")
    except NotADirectoryError as exc:
        # The pretraining command reports a missing folder as FileNotFoundError.
        raise FileNotFoundError(str(exc)) from None


def load_image_files(paths: list[str], image_size: int, channels: int) -> np.ndarray:
    """Decodes files to uint8 (N, image_size, image_size, channels): resize + centre crop."""
    def load(path):
        image = decode_image(tf.io.read_file(path), channels)
        return tf.cast(tf.round(eval_transform(image, image_size)), tf.uint8)

    ds = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    try:
        return np.concatenate([batch.numpy() for batch in ds.batch(256)], axis=0)
    except tf.errors.InvalidArgumentError as exc:
        raise ValueError(f"cannot decode an image under the given paths: {exc.message}") from exc


def load_unlabelled(dataset: str | None = None, data_dir: str | None = None,
                    image_size: int | None = None, channels: int = 3) -> np.ndarray:
    """uint8 (N, H, W, C) images from `dataset`'s train split or from `data_dir`.

    Args:
        dataset: a name in `tfdnc.datasets.DATASETS`; only the train split is
            used, without labels (data sets with a `data_dir` of their own
            read it from `data_dir`).
        data_dir: without `dataset`: a folder searched recursively for images.
        image_size: side the images are brought to (resize the shorter side,
            centre crop); None keeps in-memory data sets at their own size and
            means 224 for files.
        channels: channels to decode files to (1 or 3).
    """
    if channels not in (1, 3):
        raise ValueError(f"--channels must be 1 or 3, got {channels}")
    if dataset is not None:
        from tfdnc.datasets import load_dataset

        train = load_dataset(dataset, data_dir).train
        if train.images is not None:
            images = train.images
            if image_size is not None and image_size != images.shape[1]:
                images = np.stack([eval_transform(img, image_size).numpy() for img in images])
                images = np.round(images).astype(np.uint8)
            return images
        return load_image_files(train.paths, image_size or 224, channels)
    if data_dir is None:
        raise ValueError("give --dataset or --data-dir")
    return load_image_files(find_images(data_dir), image_size or 224, channels)
