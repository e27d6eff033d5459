"""What `DivideAndConquerModel.fit` accepts, turned into cluster batches and their schedule.

Keras users call `model.fit(x, y)` with arrays, or `model.fit(dataset)` with
`(image, label)` pairs (what `keras.utils.image_dataset_from_directory`
gives). Divide & Conquer trains on batches drawn from one cluster at a time
and re-clusters between epochs, so `prepare_fit` reads such data into a
`tfdnc.data.ClusterBatches` and adds the `DivideAndConquerSchedule` that
embeds the training set and re-clusters it every T epochs. Data that is
already cluster batches, with its schedule among the callbacks, passes
through unchanged.
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np
import tensorflow as tf

from tfdnc import clustering
from tfdnc.data.batches import ClusterBatches, as_image_set
from tfdnc.training.schedule import DivideAndConquerSchedule

DEFAULT_BATCH_SIZE = 32  # Keras's default batch size
DEFAULT_IMAGES_PER_CLASS = 4  # M; P = batch_size // M
STATE_SUBDIR = "tfdnc_clusters"  # beside BackupAndRestore's files, so a resumed fit keeps its clusters


def is_cluster_dataset(x) -> bool:
    """Whether `x` is a dataset of `({"images", "cluster"}, labels)` batches (made for a schedule)."""
    if not isinstance(x, tf.data.Dataset):
        return False
    spec = x.element_spec
    return isinstance(spec, tuple) and len(spec) >= 2 and isinstance(spec[0], dict) and "cluster" in spec[0]


def default_recluster_every(epochs: int, k_final: int) -> int:
    """T such that K doubles from 1 to `k_final` and the last stretch trains at `k_final`.

    log2(k_final) re-clusterings are needed; spreading them over the epochs
    leaves each K the same number of epochs: T = epochs // (log2(k_final) + 1).
    """
    doublings = int(round(math.log2(max(int(k_final), 1))))
    return max(1, int(epochs) // (doublings + 1))


def prepare_fit(model, x, y, fit_kwargs: dict, *, images_per_class: int | None = None,
                recluster_every: int | None = None) -> tuple:
    """Returns `(x, y, fit_kwargs)` for Keras's `fit`, building cluster batches and a schedule.

    Args:
        model: a `DivideAndConquerModel` (read: its masks' K and image size).
        x, y: what the user gave `fit`: arrays `(x, y)`, a finite
            `tf.data.Dataset` of `(image, label)` (batched or not), a
            `ClusterBatches`, or cluster batches from `ClusterBatches.dataset()`.
        fit_kwargs: the other arguments of `fit` (`batch_size`, `epochs`,
            `callbacks`, `validation_data`, `validation_split`, ...).
        images_per_class: M of the P x M batches (default 4);
            P = batch_size // M.
        recluster_every: T (default: `default_recluster_every`).

    Raises:
        ValueError / TypeError: one line naming what to pass instead
        (infinite dataset, no labels, one class, cluster batches without
        their schedule, ...).
    """
    kwargs = dict(fit_kwargs)
    callbacks = list(kwargs.get("callbacks") or [])
    if is_cluster_dataset(x):
        _check_schedule_given(x, callbacks)
        kwargs.setdefault("shuffle", False)  # batches are planned at random; Keras warns on its default
        return x, y, kwargs
    if isinstance(x, ClusterBatches):
        if y is not None:
            raise ValueError("model.fit: a ClusterBatches holds its labels; pass `model.fit(batches)` without `y`")
        if images_per_class is not None:
            raise ValueError("model.fit: `images_per_class` is set by the ClusterBatches you pass")
        batches = x
    else:
        batches = _cluster_batches(model, x, y, kwargs, images_per_class)
    for name in ("sample_weight", "class_weight"):
        if kwargs.pop(name, None) is not None:
            raise ValueError(f"model.fit: `{name}` is not supported: metric losses weigh pairs within a batch, "
                             "not samples; leave it out")
    _batch_validation(kwargs, kwargs.pop("batch_size", None))
    kwargs.pop("shuffle", None)  # the batch plan draws at random; Keras would warn about it
    schedule = next((cb for cb in callbacks if isinstance(cb, DivideAndConquerSchedule)), None)
    if schedule is None:
        schedule = _schedule(model, batches, kwargs, callbacks, recluster_every)
        callbacks = [schedule, *callbacks]  # first: the checkpoints save grown masks
    elif schedule.sampler is not batches.sampler:
        raise ValueError("model.fit: the DivideAndConquerSchedule in `callbacks` was built on another sampler; "
                         "build it on `batches.sampler` and `batches.image_set`")
    elif recluster_every is not None:
        raise ValueError("model.fit: `recluster_every` is set by the DivideAndConquerSchedule you pass")
    if kwargs.get("steps_per_epoch") is None:
        kwargs["steps_per_epoch"] = batches.steps_per_epoch
    kwargs["callbacks"] = callbacks
    kwargs["shuffle"] = False
    return batches.dataset(), None, kwargs


# --- checks and conversions -------------------------------------------------------


def _batch_validation(kwargs: dict, batch_size: int | None) -> None:
    """As Keras: validation batches default to `batch_size` (a dataset is batched here, in place)."""
    validation = kwargs.get("validation_data")
    if validation is None:
        return
    validation_batch_size = kwargs.pop("validation_batch_size", None) or batch_size
    if isinstance(validation, tf.data.Dataset):
        kwargs["validation_data"] = _batched(validation, validation_batch_size)
    elif validation_batch_size is not None:
        kwargs["validation_batch_size"] = validation_batch_size


def _check_schedule_given(dataset, callbacks) -> None:
    sampler = getattr(dataset, "_tfdnc_sampler", None)  # set by ClusterBatches.dataset()
    if sampler is None:
        return
    if not any(getattr(cb, "sampler", None) is sampler for cb in callbacks):
        raise ValueError(
            "model.fit: the dataset from ClusterBatches.dataset() needs its DivideAndConquerSchedule in "
            "`callbacks` (it publishes each epoch's clusters); pass `model.fit(batches, epochs=...)` to let "
            "the model build the schedule, or `callbacks=[DivideAndConquerSchedule(batches.sampler, "
            "batches.image_set, k_final=..., image_size=batches.image_size)]`"
        )


def _cluster_batches(model, x, y, kwargs: dict, images_per_class: int | None) -> ClusterBatches:
    source = _training_source(x, y)
    split = float(kwargs.pop("validation_split", 0.0) or 0.0)
    if split:
        if not isinstance(source, tuple):
            raise ValueError("model.fit: `validation_split` is for arrays; with a dataset pass "
                             "`validation_data=` (e.g. image_dataset_from_directory(..., subset='validation'))")
        if kwargs.get("validation_data") is not None:
            raise ValueError("model.fit: give `validation_split` or `validation_data`, not both")
        if not 0.0 < split < 1.0:
            raise ValueError(f"model.fit: `validation_split` must be in (0, 1), got {split}")
        # As Keras: the last fraction of the arrays, before any shuffling.
        cut = int(len(source[0]) * (1.0 - split))
        kwargs["validation_data"] = (source[0][cut:], source[1][cut:])
        source = (source[0][:cut], source[1][:cut])
    image_set = as_image_set(source)
    _check_classes(image_set.labels, model)
    per_class = int(images_per_class or DEFAULT_IMAGES_PER_CLASS)
    batch_size = int(kwargs.get("batch_size") or DEFAULT_BATCH_SIZE)
    if batch_size < 2 * per_class:
        raise ValueError(f"model.fit: `batch_size` ({batch_size}) must hold at least 2 classes of "
                         f"`images_per_class` ({per_class}) images, i.e. >= {2 * per_class}")
    size = model.image_shape[0] if model.image_shape else None
    return ClusterBatches(image_set, classes_per_batch=batch_size // per_class, images_per_class=per_class,
                          steps_per_epoch=kwargs.pop("steps_per_epoch", None), image_size=size)


def _training_source(x, y):
    """`(images, labels)` arrays or a finite (image, label) dataset, checked; raises naming the fix."""
    if x is None:
        raise ValueError("model.fit: give the training images: `fit(x, y)` with arrays, or `fit(dataset)` "
                         "with a tf.data.Dataset of (image, label)")
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("model.fit: with a tf.data.Dataset the labels come from the dataset; leave `y` out")
        spec = x.element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise ValueError(
                f"model.fit: the dataset must yield (image, label) pairs, its elements are {spec}; metric "
                "learning needs class labels (image_dataset_from_directory(..., labels='inferred'))"
            )
        cardinality = int(x.cardinality())
        if cardinality == int(tf.data.INFINITE_CARDINALITY):
            raise ValueError(
                "model.fit: the dataset is infinite (.repeat()?); pass the finite dataset (one pass over the "
                "training set): the model reads it once and draws its own per-cluster batches each epoch"
            )
        return x
    if isinstance(x, (dict, keras.utils.PyDataset)) or hasattr(x, "__next__"):
        raise TypeError(f"model.fit: cannot train on a {type(x).__name__}; pass arrays `fit(x, y)`, a finite "
                        "tf.data.Dataset of (image, label), or tfdnc.data.ClusterBatches")
    if y is None:
        raise ValueError("model.fit: `y` (one class label per image) is missing; metric learning needs labels: "
                         "`fit(images, labels)`")
    images, labels = np.asarray(x), np.asarray(y)
    if len(images) != len(labels):
        raise ValueError(f"model.fit: {len(images)} images in `x` but {len(labels)} labels in `y`")
    return images, labels


def _check_classes(labels: np.ndarray, model) -> None:
    classes, counts = np.unique(np.asarray(labels), return_counts=True)
    usable = int((counts >= 2).sum())
    if usable < 2:
        raise ValueError(
            f"model.fit: the training data has {len(classes)} class(es), {usable} with >= 2 images; metric "
            "learning needs >= 2 classes with >= 2 images each (pass data of several labelled classes)"
        )
    k_final = model.masks.k_max
    feasible = clustering.max_feasible_k(labels)
    if k_final > feasible:
        raise ValueError(
            f"model.fit: the model's k_final={k_final} needs {2 * k_final} classes with >= 2 images (every "
            f"cluster holds >= 2), this data has {usable}; build DivideAndConquerModel(..., k_final<={feasible})"
        )


def _schedule(model, batches: ClusterBatches, kwargs: dict, callbacks: list,
              recluster_every: int | None) -> DivideAndConquerSchedule:
    epochs = int(kwargs.get("epochs", 1))
    k_final = model.masks.k_max
    if recluster_every is None:
        recluster_every = default_recluster_every(epochs, k_final)
    return DivideAndConquerSchedule(
        batches.sampler, batches.image_set, k_final=k_final, image_size=batches.image_size,
        recluster_every=recluster_every, state_dir=_backup_state_dir(callbacks),
        verbose=0 if kwargs.get("verbose", "auto") == 0 else 1)


def _backup_state_dir(callbacks: list) -> str | None:
    """Where the schedule saves its clusters when a BackupAndRestore may resume the fit."""
    for callback in callbacks:
        backup_dir = getattr(callback, "backup_dir", None)
        if isinstance(callback, keras.callbacks.BackupAndRestore) and backup_dir is not None:
            return os.path.join(os.fspath(backup_dir), STATE_SUBDIR)
    return None


def _batched(dataset: tf.data.Dataset, batch_size: int | None) -> tf.data.Dataset:
    """An unbatched (image, label) dataset batched, as `fit` needs for validation; others as they are."""
    spec = dataset.element_spec
    if isinstance(spec, tuple) and len(spec) == 2 and spec[0].shape.rank == 3:
        return dataset.batch(int(batch_size or DEFAULT_BATCH_SIZE))
    return dataset
