"""Image transforms for training and evaluation, in core TensorFlow ops only.

The evaluation transform is also what the exported SavedModel runs in its
serving graph, so it must stay within ops TensorFlow Serving ships.
"""

from __future__ import annotations

import tensorflow as tf

# Bytes of an image's start that hold its size in every format `declared_image_size` reads.
_SIZE_HEADER_LEN = 32


def decode_image(contents: tf.Tensor, channels: int) -> tf.Tensor:
    """Decodes JPEG/PNG/GIF/BMP/WebP bytes to a uint8 (H, W, channels) tensor.

    The one decoder of training, evaluation, the decoded-image cache, image
    validation (`tfdnc.data.validation`) and the serving graph, so a file
    that validation accepts is one that training can read. Animated GIF and
    WebP give their first frame (`expand_animations=False`; a 4-D tensor
    otherwise). 16-bit PNGs are scaled to 8 bits; alpha is dropped. With
    `channels=1`, GIF, BMP and WebP (which TensorFlow decodes only to colour)
    are converted with `tf.image.rgb_to_grayscale`.

    What TensorFlow's decoders refuse (1-, 4- and 16-bit BMP, animated WebP,
    TIFF, truncated files) raises `InvalidArgumentError`; validation names
    such files and skips them before a run starts.

    Examples:
        >>> image = decode_image(tf.io.read_file("query.jpg"), channels=3)  # (H, W, 3) uint8
    """
    # channels=0 ("as stored") is refused: TensorFlow 2.21 corrupts the heap
    # (the process aborts) decoding an animated WebP that way, and a varying
    # channel count would break batching anyway.
    if channels not in (1, 3, 4):
        raise ValueError(f"decode_image: `channels` must be 1, 3 or 4, got {channels!r}")
    if channels == 1:
        # TensorFlow's GIF, BMP and WebP decoders give only 3 or 4 channels:
        # those are decoded to RGB and converted; JPEG and PNG decode to grey
        # themselves (as before, so grey JPEG/PNG pixels are unchanged).
        grey_native = tf.logical_or(
            tf.equal(tf.strings.substr(contents, 0, 3), b"\xff\xd8\xff"),
            tf.equal(tf.strings.substr(contents, 0, 8), b"\x89PNG\r\n\x1a\n"),
        )
        return tf.cond(
            grey_native, lambda: _decode(contents, 1), lambda: tf.image.rgb_to_grayscale(_decode(contents, 3))
        )
    return _decode(contents, channels)


def _decode(contents: tf.Tensor, channels: int) -> tf.Tensor:
    image = tf.io.decode_image(contents, channels=channels, expand_animations=False)
    image.set_shape([None, None, channels])
    return image


def declared_image_size(contents: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(height, width) as int64 from an image's header, without decoding it.

    JPEG through `tf.image.extract_jpeg_shape`; PNG, GIF, BMP and WebP
    (VP8, VP8L, VP8X) from their fixed header fields. (0, 0) for other data.
    """
    head = tf.strings.substr(
        tf.strings.join([contents, tf.constant(b"\0" * _SIZE_HEADER_LEN)]), 0, _SIZE_HEADER_LEN
    )
    b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

    def little(start, count):
        return tf.add_n([b[start + k] * 256**k for k in range(count)])

    def big(start, count):
        return tf.add_n([b[start + k] * 256 ** (count - 1 - k) for k in range(count)])

    def starts(magic, offset=0):
        return tf.equal(tf.strings.substr(head, offset, len(magic)), magic)

    bmp_height = little(22, 4)
    bmp_height = tf.where(bmp_height >= 2**31, 2**32 - bmp_height, bmp_height)  # top-down BMPs
    vp8l = little(21, 4)
    webp = tf.logical_and(starts(b"RIFF"), starts(b"WEBP", 8))
    candidates = [  # (is this format, height, width)
        (starts(b"\x89PNG\r\n\x1a\n"), big(20, 4), big(16, 4)),
        (starts(b"GIF8"), little(8, 2), little(6, 2)),
        (starts(b"BM"), bmp_height, little(18, 4)),
        (tf.logical_and(webp, starts(b"VP8X", 12)), little(27, 3) + 1, little(24, 3) + 1),
        (tf.logical_and(webp, starts(b"VP8L", 12)), (vp8l // 16384) % 16384 + 1, vp8l % 16384 + 1),
        (tf.logical_and(webp, starts(b"VP8 ", 12)), little(28, 2) % 16384, little(26, 2) % 16384),
    ]
    jpeg = starts(b"\xff\xd8\xff")
    jpeg_shape = tf.cond(
        jpeg,
        lambda: tf.cast(tf.image.extract_jpeg_shape(contents)[:2], tf.int64),
        lambda: tf.zeros([2], tf.int64),
    )
    height, width = jpeg_shape[0], jpeg_shape[1]
    for is_format, h, w in candidates:
        height = tf.where(is_format, h, height)
        width = tf.where(is_format, w, width)
    return height, width


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
