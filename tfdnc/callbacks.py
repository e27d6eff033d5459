"""Keras callbacks that run Divide & Conquer inside `model.fit`."""

from __future__ import annotations

import json
import math
import os
import time

import keras
import numpy as np

from tfdnc import clustering
from tfdnc.data.pipeline import make_eval_dataset
from tfdnc.data.sampling import ClusterBatchSampler
from tfdnc.datasets.base import ImageSet


class DivideAndConquerSchedule(keras.callbacks.Callback):
    """Clusters, re-clusters, grows K and switches phases while `fit` runs.

    Every `recluster_every` (T) epochs it embeds the training set under the
    evaluation transform, clusters it (penultimate backbone features by
    default), keeps learner identity with Hungarian matching or, while
    K < k_final and growth is "double", splits every cluster in two and
    doubles the masks. The new clusters go to the sampler, which the input
    pipeline reads at the next epoch boundary, so `fit` never restarts and
    ModelCheckpoint, TensorBoard, EarlyStopping and BackupAndRestore keep
    working across re-clusterings.

    The cluster state is saved in `state_dir` at each re-clustering (with the
    previous state kept), so a run restored by BackupAndRestore or
    `train.py --resume` continues with the clusters its weights were trained
    on. Put this callback *before* BackupAndRestore / ModelCheckpoint in the
    callback list, so the weights they save already hold the grown masks.

    Args:
        sampler: the `ClusterBatchSampler` behind the training dataset.
        train_set: the training images (embedded for clustering).
        k_final: final number of learners K.
        growth: "double" (TPAMI: K = 1, 2, 4, ... every T epochs) or
            "fixed" (CVPR: K = k_final from the first clustering).
        recluster_every: T.
        full_embedding_epoch: from this epoch on the loss uses the full
            embedding (None: never).
        final_k1_epochs: the last n epochs train on all data as one cluster.
        freeze_backbone_after_recluster: on the epoch right after each
            re-clustering only the embedding layer and masks learn.
        cluster_features: "penultimate" or "embedding".
        image_size, resize_size: evaluation transform.
        kmeans_iters: Lloyd iterations.
        batch_size: batch size for embedding the training set.
        seed: base seed of k-means.
        state_dir: where the cluster state is saved (None: not saved).
        verbose: print a line per re-clustering.

    Example:
    >>> sampler = ClusterBatchSampler(train.labels, 4, 8)
    >>> ds = make_train_dataset(train, sampler, steps, 28)
    >>> schedule = DivideAndConquerSchedule(sampler, train, k_final=4, image_size=28)
    >>> model.fit(ds, steps_per_epoch=steps, epochs=10, callbacks=[schedule])
    """

    def __init__(
        self,
        sampler: ClusterBatchSampler,
        train_set: ImageSet,
        *,
        k_final: int,
        image_size: int,
        resize_size: int | None = None,
        growth: str = "double",
        recluster_every: int = 2,
        full_embedding_epoch: int | None = None,
        final_k1_epochs: int = 0,
        freeze_backbone_after_recluster: bool = False,
        cluster_features: str = "penultimate",
        kmeans_iters: int = 100,
        batch_size: int = 256,
        seed: int = 0,
        state_dir: str | None = None,
        verbose: int = 1,
    ):
        super().__init__()
        if growth not in ("double", "fixed"):
            raise ValueError(f"DivideAndConquerSchedule: `growth` must be 'double' or 'fixed', got {growth!r}")
        if cluster_features not in ("penultimate", "embedding"):
            raise ValueError(
                "DivideAndConquerSchedule: `cluster_features` must be 'penultimate' or 'embedding', "
                f"got {cluster_features!r}"
            )
        if recluster_every < 1:
            raise ValueError(f"DivideAndConquerSchedule: `recluster_every` must be >= 1, got {recluster_every}")
        if len(train_set) != len(sampler.labels):
            raise ValueError(
                f"DivideAndConquerSchedule: `train_set` has {len(train_set)} images, the sampler {len(sampler.labels)}"
            )
        feasible = clustering.max_feasible_k(train_set.labels)
        if k_final > feasible:
            raise clustering.ClusteringError(
                f"--k-final {k_final} is larger than the classes allow: every cluster needs >= 2 classes "
                f"with >= 2 images, and {train_set.name or 'the training set'} allows K <= {feasible}"
            )
        self.sampler = sampler
        self.train_set = train_set
        self.labels = np.asarray(train_set.labels)
        self.k_final = int(k_final)
        self.growth = growth
        self.recluster_every = int(recluster_every)
        self.full_embedding_epoch = full_embedding_epoch
        self.final_k1_epochs = int(final_k1_epochs)
        self.freeze_backbone_after_recluster = bool(freeze_backbone_after_recluster)
        self.cluster_features = cluster_features
        self.kmeans_iters = int(kmeans_iters)
        self.seed = int(seed)
        self.state_dir = state_dir
        self.verbose = verbose
        self._eval_dataset = make_eval_dataset(train_set, image_size, resize_size, batch_size)
        self.k = 1
        self.assignments = np.zeros(len(self.labels), np.int64)
        self.usable = clustering.usable_mask(self.assignments, self.labels)
        self.last_recluster_epoch: int | None = None
        self.split_parents: np.ndarray | None = None
        self.history: list[dict] = []
        self._started = False

    # --- Keras hooks -------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._started = False
        self.sampler.reset_publication()

    def on_epoch_begin(self, epoch, logs=None):
        if not self._started:
            self._restore_or_initialise(epoch)
            self._started = True
        total = self.params.get("epochs") if self.params else None
        final_k1 = bool(total and self.final_k1_epochs and epoch >= total - self.final_k1_epochs)
        if final_k1:
            everything = np.zeros(len(self.labels), np.int64)
            self.sampler.set_clusters(everything, 1, clustering.usable_mask(everything, self.labels))
        full = final_k1 or (self.full_embedding_epoch is not None and epoch >= self.full_embedding_epoch)
        self.model.full_embedding = full
        # The TPAMI code freezes on every epoch e with e % T == 0, epoch 0
        # (right after the first clustering) included
        # (CompVis/metric-learning-divide-and-conquer-improved: train.py:822-826).
        self.model.backbone_frozen = self.freeze_backbone_after_recluster and (
            epoch == 0 or (self.last_recluster_epoch is not None and epoch == self.last_recluster_epoch + 1)
        )
        self.sampler.publish(epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        record = {"epoch": epoch, "K": self.k, "cluster_sizes": self.sampler.cluster_sizes(),
                  "full_embedding": self.model.full_embedding, "backbone_frozen": self.model.backbone_frozen}
        total = self.params.get("epochs") if self.params else None
        if self.reclusters_after(epoch, total):
            start = time.perf_counter()
            self.recluster(epoch)
            seconds = time.perf_counter() - start
            logs["recluster_seconds"] = seconds
            record.update(reclustered=True, recluster_seconds=seconds, K_next=self.k,
                          cluster_sizes_next=self.sampler.cluster_sizes())
        self.history.append(record)
        logs["K"] = float(record["K"])

    def on_train_end(self, logs=None):
        self.sampler.close()

    def reclusters_after(self, epoch: int, total_epochs: int | None = None) -> bool:
        """Whether the training set is re-clustered after `epoch`.

        Every T epochs, except after the last one, and never when the run
        ends at K = 1: one cluster of everything needs no features.
        """
        if self.k_final == 1:
            return False
        last = total_epochs is not None and epoch + 1 >= total_epochs
        return (epoch + 1) % self.recluster_every == 0 and not last

    # --- clustering ------------------------------------------------------------------
    def clustering_features(self) -> np.ndarray:
        """The training set's clustering features (L2-normalised), in order."""
        if self.cluster_features == "penultimate":
            features = self.model.backbone.predict(self._eval_dataset, verbose=0)
        else:
            features = self.model.predict(self._eval_dataset, verbose=0)
        features = np.asarray(features, dtype=np.float32)
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        return features / np.maximum(norms, 1e-12)

    def recluster(self, epoch: int) -> None:
        """Re-clusters after `epoch`; the result applies from epoch + 1."""
        features = self.clustering_features()
        seed = self.seed + 1000 * (epoch + 1)
        split = self.growth == "double" and self.k < self.k_final
        assignments = self.compute_assignments(features, self.k, seed, split)
        if split:
            self.k = self.model.masks.grow()
            self.model.reset_mask_optimizer()
        self._set(assignments, self.k)
        self.last_recluster_epoch = epoch
        self._save_state(valid_from=epoch + 1)
        if self.verbose:
            sizes = self.sampler.cluster_sizes()
            print(f"\n[tfdnc] re-clustered after epoch {epoch + 1}: K={self.k}, cluster sizes {sizes}")

    def compute_assignments(self, features: np.ndarray, k: int, seed: int, split: bool) -> np.ndarray:
        """New cluster ids from `features` (the distributed schedule clusters on the chief only).

        Without `split`: `k` balanced clusters of the fresh features,
        renumbered by Hungarian matching to the current ones when K stays the
        same. With `split` (K doubles), as the TPAMI code does: first that
        re-clustering at the current K on the fresh features, matched to the
        old clusters, then every fresh cluster c splits into 2c and 2c + 1
        by 2-means (CompVis/metric-learning-divide-and-conquer-improved:
        train.py:129-136 clusters at the current K, :193-220 reassigns by
        Hungarian matching, :233-250 divides each cluster), so a split never
        acts on a partition of stale features.
        """
        current = self.k if split else k
        if current == 1:
            fresh = np.zeros(len(self.labels), np.int64)
        else:
            fresh = clustering.cluster_balanced(features, self.labels, current, seed=seed, niter=self.kmeans_iters)
            if self.k > 1 and current == self.k:
                fresh = clustering.match_clusters(fresh, self.assignments, current, current)[fresh]
        if not split:
            return fresh
        self.split_parents = fresh  # the fresh partition the split divided, for inspection
        return clustering.split_clusters(features, self.labels, fresh, current, seed=seed + 1, niter=self.kmeans_iters)

    def _set(self, assignments: np.ndarray, k: int) -> None:
        self.assignments = np.asarray(assignments, np.int64)
        self.k = int(k)
        self.usable = clustering.usable_mask(self.assignments, self.labels)
        self.sampler.set_clusters(self.assignments, self.k, self.usable)

    def _restore_or_initialise(self, epoch: int) -> None:
        state = self._load_state(epoch)
        if state is not None:
            k = int(state["k"])
            if self.model.masks.num_active != k:
                raise RuntimeError(
                    f"cluster state in {self.state_dir!r} has K={k} but the model's masks have "
                    f"K={self.model.masks.num_active}: the weights and the cluster state come from "
                    "different epochs (put DivideAndConquerSchedule before BackupAndRestore)"
                )
            self.last_recluster_epoch = int(state["valid_from"]) - 1
            self._set(state["assignments"], k)
            return
        if self.growth == "fixed" and self.k_final > 1:
            # CVPR: K is fixed from the first clustering.
            features = self.clustering_features()
            assignments = self.compute_assignments(features, self.k_final, self.seed, split=False)
            self.model.masks.set_num_active(self.k_final)
            self._set(assignments, self.k_final)
            self._save_state(valid_from=epoch)
        else:
            self._set(np.zeros(len(self.labels), np.int64), self.model.masks.num_active if self.growth == "fixed" else 1)
            if self.model.masks.num_active != self.k:
                self.model.masks.set_num_active(self.k)

    # --- persistence ------------------------------------------------------------------
    def _paths(self):
        return os.path.join(self.state_dir, "clusters.npz"), os.path.join(self.state_dir, "clusters.prev.npz")

    def _save_state(self, valid_from: int) -> None:
        if not self.state_dir:
            return
        os.makedirs(self.state_dir, exist_ok=True)
        current, previous = self._paths()
        tmp = current + ".tmp.npz"
        np.savez(tmp, assignments=self.assignments, usable=self.usable, k=self.k, valid_from=valid_from,
                 history=json.dumps(self.history))
        if os.path.exists(current):
            os.replace(current, previous)
        os.replace(tmp, current)

    def _load_state(self, epoch: int):
        if not self.state_dir:
            return None
        best = None
        for path in self._paths():
            if not os.path.exists(path):
                continue
            try:
                with np.load(path) as data:
                    state = {key: data[key] for key in data.files}
            except (OSError, ValueError) as exc:
                print(f"[tfdnc] ignoring unreadable cluster state {path}: {exc}")
                continue
            if int(state["valid_from"]) <= epoch and (best is None or state["valid_from"] > best["valid_from"]):
                best = state
        if best is not None and "history" in best:
            self.history = [h for h in json.loads(str(best["history"])) if h["epoch"] < epoch]
        return best


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops `fit` with a clear error at the first non-finite loss.

    Unlike `keras.callbacks.TerminateOnNaN` it raises at once, before the
    epoch ends, so checkpoint callbacks never save the broken weights and the
    last good checkpoint stays the one a resumed run starts from.

    Args:
        checkpoint_hint: text naming the last good checkpoint, for the message.
    """

    def __init__(self, checkpoint_hint: str = ""):
        super().__init__()
        self.checkpoint_hint = checkpoint_hint
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            hint = f" The last good checkpoint is {self.checkpoint_hint}." if self.checkpoint_hint else ""
            raise NonFiniteLossError(
                f"the training loss became {float(loss)} at epoch {self._epoch + 1}, batch {batch + 1}."
                f"{hint} Resume with a lower learning rate (--lr) or check the input data."
            )
