"""Class-balanced batches drawn from one cluster at a time.

The sampler decides *which* images form each batch; `tfdnc.data.pipeline`
turns its index batches into image tensors. Batches of an epoch are planned
from (seed, epoch) alone, so a resumed run sees the same batches it would
have seen, and the re-clustering callback can swap clusters between epochs
while `fit` runs: the input pipeline waits for the callback to publish each
epoch before planning it, so no batch from an old clustering is prefetched.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from typing import Iterator

import numpy as np

_OPEN_SAMPLERS: "weakref.WeakSet[ClusterBatchSampler]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # A tf.data iterator waiting inside the plan generator would otherwise
    # hold the interpreter at exit (e.g. after Ctrl-C inside fit).
    for sampler in list(_OPEN_SAMPLERS):
        sampler.close()


class ClusterBatchSampler:
    """Plans batches of P classes x M images, each batch from a single cluster.

    Clusters are visited round robin (batch i of an epoch comes from cluster
    i mod K), so every learner gets the same number of steps and small
    clusters are oversampled. Inside a cluster, classes are drawn from a
    shuffled cycle and images from a shuffled cycle per class, so over an
    epoch every image is used before any repeats. A cluster with fewer than
    P classes fills the batch with more images of the classes it has.

    Args:
        labels: int class id of every training image.
        classes_per_batch: P.
        images_per_class: M.
        seed: base seed; epoch e uses the generator seeded with (seed, e).

    Examples:
        >>> labels = np.repeat(np.arange(16), 8)
        >>> assignments = labels % 2   # cluster of each image
        >>> sampler = ClusterBatchSampler(labels, classes_per_batch=4, images_per_class=8)
        >>> sampler.set_clusters(assignments, k=2)
        >>> for indices, cluster in sampler.plan_epoch(epoch=0, steps=100):
        ...     assert len(set(assignments[indices])) == 1   # every batch from one cluster
    """

    def __init__(self, labels: np.ndarray, classes_per_batch: int, images_per_class: int, seed: int = 0):
        labels = np.asarray(labels).reshape(-1)
        if classes_per_batch < 1:
            raise ValueError(f"ClusterBatchSampler: `classes_per_batch` must be >= 1, got {classes_per_batch}")
        if images_per_class < 2:
            raise ValueError(f"ClusterBatchSampler: `images_per_class` must be >= 2, got {images_per_class}")
        self.labels = labels
        self.classes_per_batch = int(classes_per_batch)
        self.images_per_class = int(images_per_class)
        self.seed = int(seed)
        self._gate = EpochGate()  # private: the schedule calls publish / reset_publication / close
        self._lock = threading.Lock()
        _OPEN_SAMPLERS.add(self)
        self.set_clusters(np.zeros(len(labels), dtype=np.int64), k=1)

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.images_per_class

    def set_clusters(self, assignments: np.ndarray, k: int, usable: np.ndarray | None = None) -> None:
        """Uses a new clustering; `usable` marks images that may be drawn.

        Raises ValueError if a cluster has no class with two usable images.
        """
        assignments = np.asarray(assignments).reshape(-1)
        if len(assignments) != len(self.labels):
            raise ValueError(
                f"ClusterBatchSampler: {len(assignments)} cluster assignments for {len(self.labels)} images"
            )
        usable = np.ones(len(self.labels), bool) if usable is None else np.asarray(usable, bool)
        members = []
        for c in range(k):
            index = np.flatnonzero((assignments == c) & usable)
            classes = {}
            for label in np.unique(self.labels[index]):
                images = index[self.labels[index] == label]
                if len(images) >= 2:
                    classes[int(label)] = images
            if not classes:
                raise ValueError(
                    f"ClusterBatchSampler: cluster {c} has no class with 2 usable images; "
                    "every batch needs positive pairs"
                )
            members.append(classes)
        with self._lock:
            self.k = int(k)
            self._members = members

    def cluster_sizes(self) -> list[int]:
        return [int(sum(len(v) for v in classes.values())) for classes in self._members]

    def plan_epoch(self, epoch: int, steps: int) -> Iterator[tuple[np.ndarray, int]]:
        """Yields `steps` (indices, cluster) pairs for `epoch`."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        members = self._members
        streams = [_ClusterStream(classes, rng) for classes in members]
        for step in range(steps):
            cluster = step % len(members)
            yield streams[cluster].batch(self.classes_per_batch, self.images_per_class), cluster

    # --- publication: the schedule callback releases one epoch at a time -------------
    def publish(self, epoch: int) -> None:
        """Allows the input pipeline to plan `epoch` with the current clusters (see `EpochGate`)."""
        self._gate.publish(epoch)

    def reset_publication(self) -> None:
        """Forgets published epochs (at the start of each `fit`)."""
        self._gate.reset()

    def close(self) -> None:
        """Ends the plan generators (at the end of `fit`), so iterators can shut down."""
        self._gate.close()

    def wait_for_epoch_after(self, previous: int, timeout: float | None = None,
                             warn_every: float = 600.0) -> int | None:
        """Blocks until an epoch later than `previous` is published (see `EpochGate.wait_for_epoch_after`)."""
        return self._gate.wait_for_epoch_after(previous, timeout=timeout, warn_every=warn_every)


class EpochGate:
    """The handshake between the schedule callback and the input pipeline's thread.

    The callback publishes epoch e once the clusters of e are set; the
    pipeline's generator waits for it before planning e, so it never
    prefetches a batch of an old clustering. Closing the gate ends the
    waiting generators (at the end of `fit`, or at interpreter exit).

    Examples:
        >>> gate = EpochGate()
        >>> gate.publish(0)
        >>> gate.wait_for_epoch_after(-1)
        0
    """

    def __init__(self):
        self._published = -1
        self._closed = False
        self._condition = threading.Condition()

    def publish(self, epoch: int) -> None:
        """Releases `epoch` to the waiting pipeline."""
        with self._condition:
            self._published = int(epoch)
            self._condition.notify_all()

    def reset(self) -> None:
        """Forgets published epochs and reopens the gate (at the start of each `fit`)."""
        with self._condition:
            self._published = -1
            self._closed = False

    def close(self) -> None:
        """Wakes every waiter with None, so iterators can shut down."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def wait_for_epoch_after(self, previous: int, timeout: float | None = None,
                             warn_every: float = 600.0) -> int | None:
        """Blocks until an epoch later than `previous` is published; returns it.

        Returns None once the gate is closed. Waiting is normal while the
        schedule re-clusters; every `warn_every` seconds a line says what the
        pipeline waits for, so a missing callback does not look like a hang.
        """
        waited = 0.0
        with self._condition:
            while True:
                slice_ = warn_every if timeout is None else min(warn_every, timeout - waited)
                self._condition.wait_for(lambda: self._closed or self._published > previous, timeout=slice_)
                if self._closed:
                    return None
                if self._published > previous:
                    return self._published
                waited += slice_
                if timeout is not None and waited >= timeout:
                    raise RuntimeError(
                        f"ClusterBatchSampler: no epoch after {previous} was published within {timeout} s. "
                        "Pass the sampler to a DivideAndConquerSchedule callback in fit(), "
                        "or call sampler.publish(epoch) yourself"
                    )
                print(f"[tfdnc] input pipeline waiting {waited:.0f} s for epoch {previous + 1} to be published "
                      "(normal during re-clustering; otherwise add DivideAndConquerSchedule to fit's callbacks)",
                      flush=True)


class _ClusterStream:
    """Shuffled cycles over one cluster's classes and each class's images."""

    def __init__(self, classes: dict[int, np.ndarray], rng: np.random.Generator):
        self.rng = rng
        self.class_ids = np.array(sorted(classes))
        self.images = {c: classes[c] for c in self.class_ids}
        self.class_order = np.empty(0, dtype=np.int64)
        self.image_order = {c: np.empty(0, dtype=np.int64) for c in self.class_ids}

    def _take_classes(self, n: int) -> np.ndarray:
        chosen = []
        while len(chosen) < n:
            if len(self.class_order) == 0:
                self.class_order = self.rng.permutation(self.class_ids)
            pick = self.class_order[0]
            self.class_order = self.class_order[1:]
            if pick not in chosen:
                chosen.append(pick)
        return np.array(chosen)

    def _take_images(self, label: int, n: int) -> np.ndarray:
        out = []
        while len(out) < n:
            if len(self.image_order[label]) == 0:
                self.image_order[label] = self.rng.permutation(self.images[label])
            need = n - len(out)
            order = self.image_order[label]
            # A class with fewer than M images repeats images within the batch.
            out.extend(order[:need].tolist())
            self.image_order[label] = order[need:]
        return np.array(out, dtype=np.int64)

    def batch(self, classes_per_batch: int, images_per_class: int) -> np.ndarray:
        batch_size = classes_per_batch * images_per_class
        p = min(classes_per_batch, len(self.class_ids))
        # Hand out images in pairs where the batch size allows, so every class
        # keeps an even count (Symmetrical Synthesis pairs samples per class).
        unit = 2 if batch_size % 2 == 0 and batch_size >= 2 * p else 1
        units = batch_size // unit
        counts = np.full(p, (units // p) * unit)
        counts[: units % p] += unit
        labels = self._take_classes(p)
        return np.concatenate([self._take_images(label, int(n)) for label, n in zip(labels, counts)])
