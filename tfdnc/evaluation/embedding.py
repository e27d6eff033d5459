"""The one way tfdnc embeds images: a function of pixel batches streamed over a `tf.data` set.

Training (clustering features, the per-epoch evaluation), `tfdnc evaluate`,
the report and the multi-worker re-clustering all embed through `embed_images` / `embed_image_set`, so the evaluation transform,
the batching and the memory use are the same everywhere.

Examples:
    >>> model = tfdnc.load_model("runs/default/model.keras")
    >>> from tfdnc.datasets import load_dataset
    >>> splits = load_dataset("digits")
    >>> fn = model_function(model)                       # or model.backbone
    >>> embeddings = embed_image_set(fn, splits.test, image_size=32)   # (N, d) float32
"""

from __future__ import annotations

import sys
import weakref
from typing import Callable

import numpy as np

from tfdnc.datasets.base import ImageSet


_FUNCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def model_function(network) -> Callable:
    """`network(images, training=False)` as a `tf.function` (it works under any strategy).

    One function per network, kept while the network lives: the schedule
    embeds the training set at every re-clustering, and tracing again each
    time would cost about a second.
    """
    import tensorflow as tf

    fn = _FUNCTIONS.get(network)
    if fn is None:
        ref = weakref.ref(network)  # the function must not keep its own key alive
        fn = _FUNCTIONS[network] = tf.function(lambda images: ref()(images, training=False),
                                               reduce_retracing=True)
    return fn


def embed_images(fn: Callable, dataset, num_rows: int, dim: int | None = None, *,
                 progress: bool = False, desc: str = "embedding") -> np.ndarray:
    """Streams the image batches of `dataset` through `fn`; returns (num_rows, D) float32.

    The output is allocated once and filled batch by batch (no list of
    batch outputs to concatenate), so peak memory is N x D floats plus the
    batches in flight.

    Args:
        fn: images (B, H, W, C) -> features (B, D), e.g. `model_function(model.backbone)`.
        dataset: yields image batches (e.g. `make_eval_dataset`).
        num_rows: images the dataset yields in total.
        dim: D (read from the first batch when None).
        progress: a progress bar on stderr.
        desc: its label.
    """
    out = None if dim is None else np.empty((num_rows, dim), np.float32)
    row = 0
    for images in _progress(dataset, progress, desc, getattr(dataset, "cardinality", lambda: None)()):
        features = np.asarray(fn(images), dtype=np.float32)
        if out is None:
            out = np.empty((num_rows, features.shape[1]), np.float32)
        if row + len(features) > num_rows:
            raise ValueError(f"embed_images: the dataset yields more than num_rows={num_rows} images")
        out[row : row + len(features)] = features
        row += len(features)
    if row != num_rows:
        raise ValueError(f"embed_images: the dataset yielded {row} images, expected num_rows={num_rows}")
    return out if out is not None else np.empty((0, dim or 0), np.float32)


def embed_image_set(fn: Callable, image_set: ImageSet, image_size: int, resize_size: int | None = None, *,
                    batch_size: int = 256, dim: int | None = None, progress: bool = False) -> np.ndarray:
    """Embeddings (N, D) of `image_set`, in order, under the evaluation transform.

    Args:
        fn: pixel batch -> features, e.g. `model_function(model)`.
        image_set: the images.
        image_size, resize_size: the evaluation transform (resize the shorter
            side to `resize_size`, centre-crop `image_size`).
        batch_size: images per batch.
        dim: D, when known (needed for an empty set).
        progress: a progress bar on stderr.
    """
    from tfdnc.data.pipeline import make_eval_dataset

    dataset = make_eval_dataset(image_set, image_size, resize_size, batch_size=batch_size)
    return embed_images(fn, dataset, len(image_set), dim, progress=progress,
                        desc=f"embedding {image_set.name or 'images'}")


def _progress(iterable, enabled: bool, desc: str, total):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    total = int(total) if total is not None and int(total) >= 0 else None
    return tqdm(iterable, desc=desc, total=total, unit="batch", file=sys.stderr)


__all__ = ["embed_image_set", "embed_images", "model_function"]
