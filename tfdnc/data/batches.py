"""`ClusterBatches`: Divide & Conquer training batches from a user's own data.

Keras users hold their images as a folder read by
`keras.utils.image_dataset_from_directory`, an `(image, label)`
`tf.data.Dataset`, or arrays. `ClusterBatches` turns any of them into the
per-cluster, class-balanced batches a `DivideAndConquerModel` trains on, and
holds the sampler that `DivideAndConquerSchedule` re-clusters between epochs.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfdnc.data.pipeline import make_train_dataset
from tfdnc.data.sampling import ClusterBatchSampler
from tfdnc.datasets.base import ImageSet


class ClusterBatches:
    """Per-cluster training batches (P classes x M images) from a folder, a dataset or arrays.

    The source is read once into an `ImageSet` (in memory for datasets and
    arrays, at the size the dataset gives them). `dataset()` is the endless
    training `tf.data.Dataset` of `({"images", "cluster"}, labels)` batches;
    the epoch's batches are planned only once a `DivideAndConquerSchedule`
    built on `sampler` and `image_set` publishes the epoch (without one,
    iterating fails after `first_epoch_timeout` seconds, naming it).

    Args:
        source: an `(images, labels)` `tf.data.Dataset` (batched or not, e.g.
            from `keras.utils.image_dataset_from_directory`; one-hot labels
            are turned into ids), a tuple `(images, labels)` of arrays, or a
            `tfdnc.datasets.ImageSet`. Images hold values in [0, 255].
        classes_per_batch: P.
        images_per_class: M (>= 2).
        steps_per_epoch: batches per epoch (default: images / batch size, rounded up).
        image_size: side of the square training crop (default: the
            images' height).
        crop_scale, crop_ratio: RandomResizedCrop ranges of the augmentation
            (default: the whole image, as `tfdnc train`; e.g. `(0.5, 1.0)` and
            `(3 / 4, 4 / 3)` for random crops).
        flip: random horizontal flips.
        seed: seed of the batch plans and augmentations.
        first_epoch_timeout: see `tfdnc.data.pipeline.make_train_dataset`.

    Examples:
        >>> from tfdnc.training import DivideAndConquerSchedule
        >>> train = keras.utils.image_dataset_from_directory("photos/", image_size=(64, 64), verbose=False)
        >>> model = tfdnc.DivideAndConquerModel(tfdnc.build_backbone("small_cnn", (64, 64, 3)), embedding_dim=16, k_final=2)
        >>> model.compile(optimizer="adam", loss=tfdnc.losses.MultiSimilarityLoss())
        >>> batches = tfdnc.data.ClusterBatches(train, classes_per_batch=4, images_per_class=4)
        >>> history = model.fit(batches, epochs=2, verbose=0)  # the model adds the schedule; or give your own:
        >>> schedule = DivideAndConquerSchedule(batches.sampler, batches.image_set, k_final=2,
        ...                                     image_size=batches.image_size)
        >>> history = model.fit(batches.dataset(), steps_per_epoch=batches.steps_per_epoch, epochs=2, verbose=0,
        ...           callbacks=[schedule])
    """

    def __init__(
        self,
        source,
        classes_per_batch: int = 4,
        images_per_class: int = 4,
        *,
        steps_per_epoch: int | None = None,
        image_size: int | None = None,
        crop_scale: tuple[float, float] = (1.0, 1.0),
        crop_ratio: tuple[float, float] = (1.0, 1.0),
        flip: bool = False,
        seed: int = 0,
        first_epoch_timeout: float | None = 120.0,
    ):
        image_set = as_image_set(source)
        classes, contiguous = np.unique(image_set.labels, return_inverse=True)
        self.image_set = image_set
        self.class_ids = classes
        self.labels = contiguous
        self.sampler = ClusterBatchSampler(contiguous, classes_per_batch, images_per_class, seed=seed)
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"ClusterBatches: `steps_per_epoch` must be >= 1, got {steps_per_epoch}")
        self.steps_per_epoch = int(steps_per_epoch or math.ceil(len(image_set) / self.sampler.batch_size))
        if image_size is None:
            if image_set.images is None:
                raise ValueError("ClusterBatches: give `image_size` for images read from files")
            image_size = int(image_set.images.shape[1])
        if image_size < 1:
            raise ValueError(f"ClusterBatches: `image_size` must be >= 1, got {image_size}")
        self.image_size = int(image_size)
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.flip = bool(flip)
        self.first_epoch_timeout = first_epoch_timeout

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def dataset(self) -> tf.data.Dataset:
        """The training dataset (pass `steps_per_epoch=self.steps_per_epoch` to `fit`).

        It needs the `DivideAndConquerSchedule` built on `sampler` among
        `fit`'s callbacks (`DivideAndConquerModel.fit` refuses it without
        one, naming it); `model.fit(batches)` adds that schedule itself.
        """
        dataset = make_train_dataset(self.image_set, self.sampler, self.steps_per_epoch, self.image_size,
                                     labels=self.labels, crop_scale=self.crop_scale, crop_ratio=self.crop_ratio,
                                     flip=self.flip, first_epoch_timeout=self.first_epoch_timeout)
        # Lets `fit` check, before the first step, that the sampler's schedule is in its callbacks.
        dataset._tfdnc_sampler = self.sampler
        return dataset


def as_image_set(source, name: str = "train") -> ImageSet:
    """An `ImageSet` from a `tf.data.Dataset` of (image, label), a tuple of arrays, or an `ImageSet`.

    Raises ValueError / TypeError naming what is wrong with the source.
    """
    if isinstance(source, ImageSet):
        return source
    if isinstance(source, tf.data.Dataset):
        images, labels = _read_dataset(source)
    elif isinstance(source, (tuple, list)) and len(source) == 2:
        images, labels = np.asarray(source[0]), np.asarray(source[1])
    else:
        raise TypeError(
            "ClusterBatches: `source` must be a tf.data.Dataset of (image, label), a tuple (images, labels) "
            f"of arrays or a tfdnc.datasets.ImageSet, got {type(source).__name__}"
        )
    return ImageSet(labels=_label_ids(labels), images=_uint8_images(images), name=name)


def _read_dataset(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError(f"ClusterBatches: the dataset must yield (image, label) pairs, its elements are {spec}")
    rank = spec[0].shape.rank
    if rank == 4:  # batched, as image_dataset_from_directory gives it
        dataset = dataset.unbatch()
    elif rank != 3:
        raise ValueError(f"ClusterBatches: dataset images must be (H, W, C) or batched (B, H, W, C), got {spec[0]}")
    images, labels = [], []
    for image, label in dataset.as_numpy_iterator():
        images.append(image)
        labels.append(label)
    if not images:
        raise ValueError("ClusterBatches: the dataset is empty")
    return np.stack(images), np.stack(labels)


def _label_ids(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot (label_mode="categorical")
        labels = labels.argmax(axis=1)
    labels = labels.reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError("ClusterBatches: labels must be class ids (integers) or one-hot rows; "
                             "label_mode='binary' floats or continuous targets are not classes")
        labels = labels.astype(np.int64)
    return labels


def _uint8_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:  # (N, H, W): grey images
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"ClusterBatches: images must be (N, H, W, C) or (N, H, W), got shape {images.shape}")
    if images.dtype == np.uint8:
        return images
    if images.size and (np.nanmin(images) < 0 or np.nanmax(images) > 255 or np.isnan(images).any()):
        raise ValueError("ClusterBatches: images must hold values in [0, 255] (as image_dataset_from_directory "
                         f"gives them), got the range [{np.nanmin(images)}, {np.nanmax(images)}]")
    return np.round(images).astype(np.uint8)
