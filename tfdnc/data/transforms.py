"""Image transforms for training and evaluation, in core TensorFlow ops only.

The evaluation transform is also what the exported SavedModel runs in its
serving graph, so it must stay within ops TensorFlow Serving ships.
"""

from __future__ import annotations

import tensorflow as tf


def decode_image(contents: tf.Tensor, channels: int) -> tf.Tensor:
    """Decodes JPEG/PNG/GIF/BMP bytes to a uint8 (H, W, channels) tensor."""
    image = tf.io.decode_image(contents, channels=channels, expand_animations=False)
    image.set_shape([None, None, channels])
    return image


def crop_to_box(image: tf.Tensor, box: tf.Tensor) -> tf.Tensor:
    """Crops to an (x, y, width, height) pixel box, clipped to the image."""
    shape = tf.shape(image)
    box = tf.cast(tf.round(box), tf.int32)
    x0 = tf.clip_by_value(box[0], 0, shape[1] - 1)
    y0 = tf.clip_by_value(box[1], 0, shape[0] - 1)
    w = tf.clip_by_value(box[2], 1, shape[1] - x0)
    h = tf.clip_by_value(box[3], 1, shape[0] - y0)
    return image[y0 : y0 + h, x0 : x0 + w]


def eval_transform(image: tf.Tensor, image_size: int, resize_size: int | None = None) -> tf.Tensor:
    """Resize so the shorter side is `resize_size`, then centre-crop `image_size`.

    The papers' evaluation transform (resize 256, centre crop 224). Takes one
    (H, W, C) image of any size and dtype with values in [0, 255]; returns
    float32 (image_size, image_size, C) in [0, 255].
    """
    resize_size = resize_size or image_size
    image = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)
    scale = float(resize_size) / tf.minimum(height, width)
    new_h = tf.maximum(tf.cast(tf.round(height * scale), tf.int32), image_size)
    new_w = tf.maximum(tf.cast(tf.round(width * scale), tf.int32), image_size)
    image = tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear", antialias=True)
    top = (new_h - image_size) // 2
    left = (new_w - image_size) // 2
    image = image[top : top + image_size, left : left + image_size]
    image = tf.clip_by_value(image, 0.0, 255.0)
    image.set_shape([image_size, image_size, None])
    return image


def random_resized_crop(
    image: tf.Tensor,
    image_size: int,
    seed: tf.Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tf.Tensor:
    """RandomResizedCrop (Inception-style) of one image of any size.

    A crop covering a random `scale` fraction of the area with a random
    aspect ratio in `ratio` is cut from the *original* image and resized to
    `image_size` squared. Stateless: the same `seed` (int32 shape (2,))
    gives the same crop, which makes runs repeatable and resumable.

    keras-cv's RandomCropAndResize works on batches of equally sized images;
    decoded data-set images differ in size, so the crop is done per image
    here with `tf.image.stateless_sample_distorted_bounding_box`.
    """
    image = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, size)
    crop = tf.image.resize(crop, (image_size, image_size), method="bilinear", antialias=True)
    crop = tf.clip_by_value(crop, 0.0, 255.0)
    crop.set_shape([image_size, image_size, None])
    return crop


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Horizontal flip with probability 1/2 (stateless)."""
    return tf.image.stateless_random_flip_left_right(image, seed=seed)
