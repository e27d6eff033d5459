"""The Keras callback that runs Divide & Conquer inside `model.fit`.

It wires four parts, each of which does one job and is given to it:

- `PhasePolicy` (`tfdnc.training.phases`): which epochs are frozen,
  full-embedding or final K = 1, and after which to re-cluster;
- a re-clusterer (`tfdnc.training.recluster.LocalReclusterer`, or
  `tfdnc.distributed.recluster.DistributedReclusterer`): features, then ids;
- `ClusterStateStore` (`tfdnc.training.cluster_state`): the saved generations;
- the sampler's epoch gate (`tfdnc.data.sampling.EpochGate`): the input
  pipeline plans epoch e only once the callback released it.

The callback itself applies what they decide to the model (phase flags,
grown masks, a restarted mask optimizer) and to the sampler.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from tfdnc import clustering
from tfdnc.data.sampling import ClusterBatchSampler
from tfdnc.datasets.base import ImageSet
from tfdnc.training import faults
from tfdnc.training.cluster_state import ClusterState, ClusterStateStore
from tfdnc.training.phases import GROWTH, PhasePolicy
from tfdnc.training.recluster import LocalReclusterer, check_cluster_features


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
        reclusterer: who computes features and ids (default: a
            `LocalReclusterer` from the arguments above).
        store: where cluster states go (default: `ClusterStateStore(state_dir)`).

    Examples:
        >>> sampler = ClusterBatchSampler(train.labels, 4, 8)  # doctest: +SKIP
        >>> ds = make_train_dataset(train, sampler, steps, 28)  # doctest: +SKIP
        >>> schedule = DivideAndConquerSchedule(sampler, train, k_final=4, image_size=28)  # doctest: +SKIP
        >>> model.fit(ds, steps_per_epoch=steps, epochs=10, callbacks=[schedule])  # doctest: +SKIP
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
        reclusterer=None,
        store: ClusterStateStore | None = None,
    ):
        super().__init__()
        if growth not in GROWTH:
            raise ValueError(f"DivideAndConquerSchedule: `growth` must be 'double' or 'fixed', got {growth!r}")
        check_cluster_features(cluster_features, "DivideAndConquerSchedule")
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
        self.seed = int(seed)
        self.verbose = verbose
        self.policy = PhasePolicy(k_final=k_final, recluster_every=recluster_every,
                                  full_embedding_epoch=full_embedding_epoch, final_k1_epochs=final_k1_epochs,
                                  freeze_backbone_after_recluster=freeze_backbone_after_recluster)
        self.reclusterer = reclusterer or LocalReclusterer(
            train_set, image_size=image_size, resize_size=resize_size, cluster_features=cluster_features,
            kmeans_iters=kmeans_iters, batch_size=batch_size)
        self.store = store if store is not None else ClusterStateStore(state_dir)
        self.k = 1
        self.assignments = np.zeros(len(self.labels), np.int64)
        self.usable = clustering.usable_mask(self.assignments, self.labels)
        self.last_recluster_epoch: int | None = None
        self.split_parents: np.ndarray | None = None
        self.history: list[dict] = []
        self._started = False
        self._in_final_k1 = False
        self._resume: tuple[bool, ClusterState | None] = (False, None)

    def resume_from(self, state: ClusterState | None) -> None:
        """Starts the next `fit` from `state` (None: cluster afresh), not from the store's files.

        `train.py` calls it with the cluster state of the backup generation it
        restored the weights from, so the two always belong to the same epoch.
        """
        self._resume = (True, state)

    def cluster_state(self) -> ClusterState:
        """The clustering the next epoch trains with, and the history so far (what a backup saves)."""
        valid_from = 0 if self.last_recluster_epoch is None else self.last_recluster_epoch + 1
        return ClusterState(self.assignments, self.usable, self.k, valid_from, list(self.history))

    # --- Keras hooks -------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._started = False
        self._in_final_k1 = False
        self.sampler.gate.reset()

    def on_epoch_begin(self, epoch, logs=None):
        if not self._started:
            self._restore_or_initialise(epoch)
            self._started = True
        phase = self.policy.phase(epoch, self._total_epochs(), self.last_recluster_epoch)
        if phase.final_k1:
            changed = self.sampler.k != 1 or not self._in_final_k1
            everything = np.zeros(len(self.labels), np.int64)
            self.sampler.set_clusters(everything, 1, clustering.usable_mask(everything, self.labels))
            if changed:
                self._clusters_changed()
        self._in_final_k1 = phase.final_k1
        self.model.full_embedding = phase.full_embedding
        self.model.backbone_frozen = phase.backbone_frozen
        self.sampler.gate.publish(epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        record = {"epoch": epoch, "K": self.k, "cluster_sizes": self.sampler.cluster_sizes(),
                  "full_embedding": self.model.full_embedding, "backbone_frozen": self.model.backbone_frozen,
                  **self._learning_rates(), **self._mask_statistics()}
        if self.reclusters_after(epoch, self._total_epochs()):
            start = time.perf_counter()
            self.recluster(epoch)
            seconds = time.perf_counter() - start
            logs["recluster_seconds"] = seconds
            record.update(reclustered=True, recluster_seconds=seconds, K_next=self.k,
                          cluster_sizes_next=self.sampler.cluster_sizes())
        self.history.append(record)
        logs["K"] = float(record["K"])

    def on_train_end(self, logs=None):
        self.sampler.gate.close()

    def _mask_statistics(self) -> dict:
        """How far the masks trained this epoch divide the embedding (`SubspaceMasks.statistics`)."""
        statistics = getattr(getattr(self.model, "masks", None), "statistics", None)
        return statistics() if callable(statistics) else {}

    def _learning_rates(self) -> dict:
        """The rates of network and masks at the epoch's end: those the next step uses (after any decay)."""
        rates = {}
        for key, optimizer in (("learning_rate", getattr(self.model, "optimizer", None)),
                               ("mask_learning_rate", getattr(self.model, "mask_optimizer", None))):
            if optimizer is not None:
                rates[key] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        return rates

    def _total_epochs(self) -> int | None:
        return self.params.get("epochs") if self.params else None

    def reclusters_after(self, epoch: int, total_epochs: int | None = None) -> bool:
        """Whether the training set is re-clustered after `epoch` (see `PhasePolicy`)."""
        return self.policy.reclusters_after(epoch, total_epochs)

    # --- clustering ------------------------------------------------------------------
    def clustering_features(self) -> np.ndarray | None:
        """The training set's clustering features (L2-normalised), in order; None off the chief."""
        return self.reclusterer.features(self.model)

    def recluster(self, epoch: int) -> None:
        """Re-clusters after `epoch`; the result applies from epoch + 1."""
        features = self.clustering_features()
        split = self.growth == "double" and self.k < self.k_final
        new = self.reclusterer.assign(features, self.labels, self.assignments, current_k=self.k,
                                      target_k=self.k, seed=self.seed + 1000 * (epoch + 1), split=split)
        if split:
            self.split_parents = new.split_parents  # the fresh partition the split divided, for inspection
            self.model.masks.grow()
            self.model.reset_mask_optimizer()
        self._set(new.assignments, self.model.masks.num_active if split else self.k)
        self.last_recluster_epoch = epoch
        self._save(valid_from=epoch + 1)
        if self.verbose:
            print(f"\n[tfdnc] re-clustered after epoch {epoch + 1}: K={self.k}, "
                  f"cluster sizes {self.sampler.cluster_sizes()}", flush=True)
        faults.kill_point("after_recluster", epoch=epoch + 1)

    def _set(self, assignments: np.ndarray, k: int) -> None:
        self.assignments = np.asarray(assignments, np.int64)
        self.k = int(k)
        self.usable = clustering.usable_mask(self.assignments, self.labels)
        self.sampler.set_clusters(self.assignments, self.k, self.usable)
        self._clusters_changed()

    def _clusters_changed(self) -> None:
        # The loss may hold state tied to the clusters (XBM memories).
        notify = getattr(self.model, "on_clusters_changed", None)
        if notify is not None:
            notify()

    def _restore_or_initialise(self, epoch: int) -> None:
        given, state = self._resume
        if given:
            self._resume = (False, None)
            if state is not None:
                state.history = [h for h in state.history if h["epoch"] < epoch]
        else:
            state = self.store.load(epoch)
        if state is not None:
            self._restore(state)
        elif self.growth == "fixed" and self.k_final > 1:
            # CVPR: K is fixed from the first clustering.
            new = self.reclusterer.assign(self.clustering_features(), self.labels, self.assignments, current_k=self.k,
                                          target_k=self.k_final, seed=self.seed, split=False)
            self.model.masks.set_num_active(self.k_final)
            self._set(new.assignments, self.k_final)
            self._save(valid_from=epoch)
        else:
            self._set(np.zeros(len(self.labels), np.int64), self.model.masks.num_active if self.growth == "fixed" else 1)
            if self.model.masks.num_active != self.k:
                self.model.masks.set_num_active(self.k)

    def _restore(self, state: ClusterState) -> None:
        if self.model.masks.num_active != state.k:
            raise RuntimeError(
                f"cluster state in {self.store.directory!r} has K={state.k} but the model's masks have "
                f"K={self.model.masks.num_active}: the weights and the cluster state come from "
                "different epochs (put DivideAndConquerSchedule before BackupAndRestore)"
            )
        self.history = state.history
        # valid_from 0: the first clustering (fixed growth), not a re-clustering.
        self.last_recluster_epoch = state.valid_from - 1 if state.valid_from > 0 else None
        self._set(state.assignments, state.k)

    def _save(self, valid_from: int) -> None:
        self.store.save(ClusterState(self.assignments, self.usable, self.k, valid_from, self.history))

