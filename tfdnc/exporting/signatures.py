"""The building blocks of an export's serving graphs, around a Keras model.

`ServingGraphs` decodes and checks requests and runs the model;
`SearchGallery` holds the gallery variables and answers top-k queries. The
signatures themselves (which blocks each one chains, its inputs and outputs)
are declared in `tfdnc.exporting.endpoints`, one class each.

Everything here is core TensorFlow (decode, resize, matmul, top-k, asserts),
so TF Serving can run the exported graphs without custom ops or Python.

Bad requests fail with `InvalidArgument` for that request only (TF Serving
answers HTTP 400 / gRPC INVALID_ARGUMENT and keeps serving): an empty batch,
an empty or non-image string (the message names its index in the batch),
a corrupt image (the decoder's own message), pixels of the wrong shape,
NaN or infinite pixels and pixels outside [0, 255].
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfdnc.data.transforms import declared_image_size, decode_image, eval_transform
from tfdnc.exporting import contract

# (offset, magic bytes) per format; an image matches if any entry matches.
_MAGIC = (
    (0, b"\xff\xd8\xff"),  # JPEG
    (0, b"\x89PNG\r\n\x1a\n"),  # PNG
    (0, b"GIF87a"),
    (0, b"GIF89a"),
    (0, b"BM"),  # BMP
    (8, b"WEBP"),  # RIFF....WEBP
)
_HEADER_LEN = 12
# 40 megapixels: an 8K photo fits; decoding it takes 120 MB (uint8 RGB) and
# the float32 copy the resize starts from 480 MB.
DEFAULT_MAX_PIXELS = 40_000_000
# How far outside [0, 255] `embed_pixels` accepts a value: the round-off of a
# client's float preprocessing (a resize that overshoots should clip, as
# decoding to bytes does).
PIXEL_SLACK = 1.0


class ServingGraphs:
    """Builds the export's signature functions around one embedding model.

    Args:
        model: a Keras model taking float32 (B, H, W, C) images with values
            in [0, 255] and returning (B, d) embeddings. If it has a
            `learner_embeddings` method (a `DivideAndConquerModel`), the
            `embed_learners` signature is built too.
        image_size: side of the square crop the model sees (H = W).
        resize_size: the evaluation resize of the shorter side before the
            centre crop (None: `image_size`), as in `eval_transform`.
        channels: C, what images are decoded to (1 grey, 3 RGB).
        num_learners: how many learner embeddings `embed_learners` returns
            (the active ones); None: all the model has.
        max_pixels: largest image (height x width, read from its header
            before decoding) a request may send; bigger ones fail that
            request instead of letting a decompression bomb exhaust the
            server's memory. None: no limit.

    Attributes:
        gallery: the `SearchGallery` of an export with a search gallery
            (`attach_gallery`), else None.

    Examples:
        >>> model = tfdnc.load_model("runs/default/model.keras")
        >>> png_bytes = encode_png(np.zeros((40, 40, 1), np.uint8))
        >>> graphs = ServingGraphs(model, image_size=32, channels=model.backbone.input_shape[-1])
        >>> pixels = graphs.decode(tf.constant([png_bytes]), "serving_default")
        >>> embeddings = graphs.embed(pixels)
    """

    def __init__(
        self,
        model,
        image_size: int,
        resize_size: int | None = None,
        channels: int = 3,
        num_learners: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        if int(image_size) < 1:
            raise ValueError(f"ServingGraphs: `image_size` must be >= 1, got {image_size}")
        if resize_size is not None and int(resize_size) < int(image_size):
            raise ValueError(
                f"ServingGraphs: `resize_size` ({resize_size}) must be >= `image_size` ({image_size})"
            )
        if channels not in (1, 3):
            raise ValueError(f"ServingGraphs: `channels` must be 1 or 3, got {channels}")
        if max_pixels is not None and int(max_pixels) < 1:
            raise ValueError(f"ServingGraphs: `max_pixels` must be >= 1 or None, got {max_pixels}")
        self.model = model
        self.image_size = int(image_size)
        self.resize_size = int(resize_size) if resize_size else self.image_size
        self.channels = int(channels)
        self.num_learners = num_learners
        self.max_pixels = int(max_pixels) if max_pixels is not None else None
        self.image_shape = (self.image_size, self.image_size, self.channels)
        self.gallery: SearchGallery | None = None

    def attach_gallery(self, gallery, top_k: int = 10, max_k: int | None = None) -> "SearchGallery":
        """Makes `gallery` (a `tfdnc.exporting.Gallery`) the search gallery; returns its variables' holder."""
        self.gallery = SearchGallery(gallery, top_k, max_k)
        return self.gallery

    # --- what the signatures' declarations resolve ----------------------------
    def dimension(self, letter) -> int | None:
        """A `TensorInfo` shape entry -> a TensorSpec dimension: "B" (batch) None, "H"/"W" the image
        size, "C" the channels; an int is itself."""
        if isinstance(letter, int):
            return letter
        sizes = {"B": None, "H": self.image_size, "W": self.image_size, "C": self.channels}
        if letter not in sizes:
            raise ValueError(f"ServingGraphs: unknown input dimension {letter!r}; use an int or one of {sorted(sizes)}")
        return sizes[letter]

    def warmup_image(self) -> bytes:
        """A mid-grey PNG at the model's size: decodes everywhere and exercises the whole graph."""
        return encode_png(np.full(self.image_shape, 128, np.uint8))

    @property
    def has_learners(self) -> bool:
        return callable(getattr(self.model, "learner_embeddings", None))

    # --- building blocks -----------------------------------------------------
    def decode(self, image_bytes: tf.Tensor, signature: str) -> tf.Tensor:
        """(B,) encoded images -> float32 (B, H, W, C) under the eval transform."""
        count = tf.shape(image_bytes)[0]
        non_empty = tf.debugging.Assert(
            count > 0,
            [f"{signature}: `{contract.IMAGE_BYTES}` is an empty batch; send at least one image"],
        )

        def one(args):
            index, contents = args
            message = tf.strings.join([
                f"{signature}: `{contract.IMAGE_BYTES}`[",
                tf.strings.as_string(index),
                "] (",
                tf.strings.as_string(tf.strings.length(contents)),
                " bytes) is not a " + "/".join(contract.IMAGE_FORMATS) + " image",
            ])
            check = tf.debugging.Assert(_looks_like_image(contents), [message])
            # Format check, then size check, then decode: each gates the next.
            with tf.control_dependencies([check]):
                decodable = self._decodable_check(index, contents, signature)
            with tf.control_dependencies(decodable):
                if self.max_pixels is None:
                    gate = tf.no_op()
                else:
                    gate = self._size_check(index, contents, signature)
            with tf.control_dependencies([gate]):
                image = decode_request_image(contents, self.channels)
            return eval_transform(image, self.image_size, self.resize_size)

        with tf.control_dependencies([non_empty]):
            indices = tf.range(count)
        return tf.map_fn(
            one,
            (indices, image_bytes),
            fn_output_signature=tf.TensorSpec(self.image_shape, tf.float32),
        )

    def _decodable_check(self, index, contents, signature) -> list:
        """Asserts against what TensorFlow's decoders refuse, or decode wrong, without saying which image.

        The rules of `tfdnc.data.validation`'s named skips, as graph ops: an
        animated WebP without alpha; a BMP that is not uncompressed 8-bit
        grey, 24- or 32-bit (an 8-bit colour palette decodes without error,
        as grey colour indices).
        """
        header = _Header(contents)
        prefix = [f"{signature}: `{contract.IMAGE_BYTES}`[", tf.strings.as_string(index), "] is "]
        webp = tf.debugging.Assert(
            tf.logical_not(header.webp_animated_without_alpha),
            [tf.strings.join(prefix + [
                "an animated WebP without alpha, which TensorFlow's WebP decoder cannot read; "
                "send a still image (e.g. its first frame)"])],
        )
        bits = header.little(28, 2)
        bmp = tf.debugging.Assert(
            tf.logical_not(tf.logical_and(header.starts(b"BM"), tf.logical_not(_readable_bmp(contents, header)))),
            [tf.strings.join(prefix + [
                "a ", tf.strings.as_string(bits), "-bit BMP (compression ",
                tf.strings.as_string(header.little(30, 4)), ") that TensorFlow cannot decode right: it "
                "reads uncompressed 24- and 32-bit BMPs and 8-bit grey ones only; send a PNG or JPEG"])],
        )
        return [webp, bmp]

    def _size_check(self, index, contents, signature):
        height, width = declared_image_size(contents)
        message = tf.strings.join([
            f"{signature}: `{contract.IMAGE_BYTES}`[",
            tf.strings.as_string(index),
            "] is ",
            tf.strings.as_string(width),
            "x",
            tf.strings.as_string(height),
            f" pixels; this export decodes at most {self.max_pixels} pixels per image "
            "(export option max_pixels)",
        ])
        return tf.debugging.Assert(height * width <= self.max_pixels, [message])

    def check_pixels(self, pixels: tf.Tensor, signature: str) -> tf.Tensor:
        """Returns `pixels` after run-time checks of batch size and image shape."""
        shape = tf.shape(pixels)
        expected = tf.constant(self.image_shape, tf.int32)
        checks = [
            tf.debugging.Assert(
                shape[0] > 0,
                [f"{signature}: `{contract.PIXELS}` is an empty batch; send at least one image"],
            ),
            tf.debugging.Assert(
                tf.reduce_all(tf.equal(shape[1:], expected)),
                [
                    f"{signature}: `{contract.PIXELS}` must have shape (batch, "
                    + ", ".join(map(str, self.image_shape))
                    + "), got",
                    shape,
                ],
                summarize=4,
            ),
        ]
        with tf.control_dependencies(checks):
            # After the shape checks, so a wrong shape is reported as such.
            finite = tf.debugging.Assert(
                tf.reduce_all(tf.math.is_finite(pixels)),
                [f"{signature}: `{contract.PIXELS}` holds NaN or infinite values; "
                 "send pixel values in [0, 255]"],
            )
        with tf.control_dependencies([finite]):
            # After the finiteness check (NaN compares false either way). The
            # model was trained on decoded images in [0, 255]; values far
            # outside (1e30) give embeddings without meaning.
            low, high = tf.reduce_min(pixels), tf.reduce_max(pixels)
            in_range = tf.debugging.Assert(
                tf.logical_and(low >= -PIXEL_SLACK, high <= 255.0 + PIXEL_SLACK),
                [f"{signature}: `{contract.PIXELS}` holds values outside [0, 255] (lowest, highest:", low, high,
                 "); send pixel values in [0, 255]"],
            )
        with tf.control_dependencies([in_range]):
            return tf.identity(pixels)

    def embed(self, pixels: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.model(pixels, training=False), tf.float32)

    def learner_embeddings(self, pixels: tf.Tensor) -> tf.Tensor:
        out = tf.cast(self.model.learner_embeddings(pixels, training=False), tf.float32)
        if self.num_learners is not None:
            out = out[:, : self.num_learners]
        return out


class SearchGallery:
    """The gallery of an export's search signatures, as variables, and the top-k query over it.

    The embeddings (L2-normalised, so similarities are cosines) and ids are
    `tf.Variable`s, not constants, so the gallery lives in the SavedModel's
    variables/ checkpoint, not in the graph proto.

    Args:
        gallery: a `tfdnc.exporting.Gallery`.
        top_k: hits of the fixed-k search; clipped to the gallery size.
        max_k: the largest per-request k (default `top_k`); clipped too.

    Examples:
        >>> from tfdnc.exporting import Gallery
        >>> rng = np.random.default_rng(0)
        >>> embeddings, ids, queries = rng.normal(size=(20, 8)), np.arange(20), tf.random.normal((2, 8))
        >>> hits = SearchGallery(Gallery(embeddings, ids), top_k=10).top_hits(tf.math.l2_normalize(queries, axis=1), 10)
    """

    def __init__(self, gallery, top_k: int = 10, max_k: int | None = None):
        max_k = top_k if max_k is None else max_k
        for name, value in (("top_k", top_k), ("max_k", max_k)):
            if int(value) < 1:
                raise ValueError(f"ServingGraphs: `{name}` must be >= 1, got {value}")
        self.size = len(gallery)
        self.top_k = min(int(top_k), self.size)
        self.max_k = min(int(max_k), self.size)
        self.embeddings = tf.Variable(gallery.normalized_embeddings(), trainable=False, name="gallery_embeddings")
        self.ids = tf.Variable(gallery.ids, trainable=False, name="gallery_ids")

    @property
    def variables(self) -> list:
        return [self.embeddings, self.ids]

    def top_hits(self, queries: tf.Tensor, k) -> dict[str, tf.Tensor]:
        """The k most similar gallery items of each query: ids, cosines, rows."""
        similarities = tf.matmul(queries, self.embeddings, transpose_b=True)
        top = tf.math.top_k(similarities, k=k)
        return {
            contract.IDS: tf.gather(self.ids, top.indices),
            contract.SIMILARITIES: top.values,
            contract.INDICES: top.indices,
        }

    def check_k(self, k: tf.Tensor, count: tf.Tensor, signature: str) -> tf.Tensor:
        """Returns `k` after checking one value per image, each in 1..max_k."""
        # Flattened first: TF Serving feeds skip the (batch,) shape check, and
        # every op below then sees one dimension whatever was sent.
        k = tf.reshape(k, [-1])
        shape_ok = tf.debugging.Assert(
            tf.equal(tf.size(k), count),
            [f"{signature}: `{contract.K}` must hold one value per image in "
             f"`{contract.IMAGE_BYTES}` (shape (batch,)); got shape", tf.shape(k),
             "for a batch of", count],
        )
        with tf.control_dependencies([shape_ok]):
            outside = tf.logical_or(k < 1, k > self.max_k)
            first = tf.argmax(tf.cast(outside, tf.int32), output_type=tf.int32)
            in_range = tf.debugging.Assert(
                tf.logical_not(tf.reduce_any(outside)),
                [tf.strings.join([
                    f"{signature}: `{contract.K}`[", tf.strings.as_string(first), "] = ",
                    tf.strings.as_string(tf.gather(k, first)),
                    f" is outside 1..{self.max_k}; this export returns at most {self.max_k} hits "
                    "(export option max_k, clipped to the gallery size)",
                ])],
            )
        with tf.control_dependencies([in_range]):
            return tf.identity(k)


def _looks_like_image(contents: tf.Tensor) -> tf.Tensor:
    header = _Header(contents, _HEADER_LEN)  # padded: slices never run past a short string
    matches = [header.starts(magic, offset) for offset, magic in _MAGIC]
    matches[-1] = tf.logical_and(header.starts(b"RIFF"), matches[-1])
    return tf.logical_and(tf.strings.length(contents) > 0, tf.reduce_any(tf.stack(matches)))


class _Header:
    """The first bytes of an encoded image, padded with NULs, as graph ops."""

    def __init__(self, contents: tf.Tensor, length: int = 64):  # 64: every field read below
        self.text = tf.strings.substr(
            tf.strings.join([contents, tf.constant(b"\0" * length)]), 0, length
        )
        self.bytes = tf.io.decode_raw(self.text, tf.uint8)

    def starts(self, magic: bytes, offset: int = 0) -> tf.Tensor:
        return tf.equal(tf.strings.substr(self.text, offset, len(magic)), magic)

    def little(self, start: int, count: int) -> tf.Tensor:
        """An unsigned little-endian integer (int64) from `count` bytes at `start`."""
        return tf.add_n([tf.cast(self.bytes[start + k], tf.int64) * 256**k for k in range(count)])

    def flag(self, index: int, mask: int) -> tf.Tensor:
        return tf.not_equal(tf.bitwise.bitwise_and(self.bytes[index], mask), 0)

    @property
    def webp(self) -> tf.Tensor:
        return tf.logical_and(self.starts(b"RIFF"), self.starts(b"WEBP", 8))

    @property
    def webp_alpha(self) -> tf.Tensor:
        """Whether a WebP has an alpha channel (VP8X ALPHA flag, or VP8L's alpha bit)."""
        vp8x = tf.logical_and(self.starts(b"VP8X", 12), self.flag(20, 0x10))
        vp8l = tf.logical_and(self.starts(b"VP8L", 12), self.flag(24, 0x10))
        return tf.logical_and(self.webp, tf.logical_or(vp8x, vp8l))

    @property
    def webp_animated_without_alpha(self) -> tf.Tensor:
        animated = tf.logical_and(self.starts(b"VP8X", 12), self.flag(20, 0x02))
        return tf.logical_and(tf.logical_and(self.webp, animated), tf.logical_not(self.webp_alpha))


def _readable_bmp(contents: tf.Tensor, header: _Header) -> tf.Tensor:
    """Whether TensorFlow decodes this BMP right (see `tfdnc.data.validation`'s BMP reasons)."""
    bits, compression = header.little(28, 2), header.little(30, 4)
    plain = tf.logical_and(tf.reduce_any(tf.equal(bits, [8, 24, 32])), tf.reduce_any(tf.equal(compression, [0, 3])))

    def grey_ramp():
        # TensorFlow ignores the palette and returns the indices: right only
        # for the palette index i -> (i, i, i).
        length = tf.cast(tf.strings.length(contents), tf.int64)
        start = tf.minimum(14 + header.little(14, 4), length)
        used = tf.where(tf.equal(header.little(46, 4), 0), tf.constant(256, tf.int64), header.little(46, 4))
        table = tf.io.decode_raw(tf.strings.substr(contents, start, tf.minimum(4 * used, length - start)), tf.uint8)
        entries = tf.reshape(table[: tf.size(table) // 4 * 4], [-1, 4])[:, :3]
        ramp = tf.cast(tf.range(tf.shape(entries)[0])[:, None] * tf.ones([1, 3], tf.int32), tf.uint8)
        return tf.reduce_all(tf.equal(entries, ramp))

    is_8bit = tf.logical_and(plain, tf.equal(bits, 8))
    return tf.logical_and(plain, tf.cond(is_8bit, grey_ramp, lambda: tf.constant(True)))


def decode_request_image(contents: tf.Tensor, channels: int) -> tf.Tensor:
    """`tfdnc.data.transforms.decode_image`, and WebPs with alpha too.

    TensorFlow decodes a WebP only at its own channel count: 4 for one with
    alpha (still or animated), which the training decoder's 3 or 1 refuse.
    Those are decoded at 4 and their alpha dropped (as PNG's decoder drops
    it), then made grey for a grey export the way the training decoder makes
    GIF, BMP and WebP grey. Everything else is the training decoder's.
    """

    def with_alpha():
        rgb = decode_image(contents, 4)[..., :3]
        return rgb if channels == 3 else tf.image.rgb_to_grayscale(rgb)

    return tf.cond(_Header(contents).webp_alpha, with_alpha, lambda: decode_image(contents, channels))


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W, C) array -> PNG bytes (for warm-up requests and tests)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    return tf.io.encode_png(tf.constant(image, tf.uint8)).numpy()
