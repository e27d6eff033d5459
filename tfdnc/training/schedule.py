"""The Keras callback that runs Divide & Conquer inside `model.fit`.

It wires four parts, each of which does one job and is given to it:

- `PhasePolicy` (`tfdnc.training.phases`): which epochs are frozen,
  full-embedding or final K = 1, after which to re-cluster, and at which K
  (the K rule, as `KStep`s);
- a `Reclusterer` (`tfdnc.training.recluster`: `LocalReclusterer`, or
  `DistributedReclusterer` for several workers): features, then ids;
- a `ClusterStateStore` (`tfdnc.training.cluster_state`), where a run that
  has no backup generations keeps its cluster states (None: the backup
  generations of `train.py` hold them, `GenerationBackup`);
- the `ClusterBatchSampler` (`tfdnc.data.sampling`): it gets the clusters
  and plans epoch e once the callback `publish`ed it.

The callback applies what they decide through public methods only: the
model's phase flags, `grow_learners` / `set_num_learners`, and the
sampler's `set_clusters`, `reset_publication`, `publish` and `close`.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from tfdnc import clustering
from tfdnc.data.sampling import ClusterBatchSampler
from tfdnc.datasets.base import ImageSet
from tfdnc.training.cluster_state import ClusterState, ClusterStateStore
from tfdnc.training.phases import KStep, PhasePolicy
from tfdnc.training.recluster import LocalReclusterer, Reclusterer


class DivideAndConquerSchedule(keras.callbacks.Callback):
    """Clusters, re-clusters, grows K and switches phases while `fit` runs.

    Every `recluster_every` (T) epochs its reclusterer embeds the training
    set under the evaluation transform and clusters it (penultimate backbone
    features by default), keeping learner identity with Hungarian matching
    or, while K < k_final and growth is "double", splitting every cluster in
    two; the schedule then doubles the learners (`model.grow_learners()`).
    The new clusters go to the sampler, which the input pipeline reads at the
    next epoch boundary, so `fit` never restarts and ModelCheckpoint,
    TensorBoard, EarlyStopping and BackupAndRestore keep working across
    re-clusterings.

    The cluster state is saved in `state_dir` (its `store`) at each
    re-clustering, with the previous state kept, so a run restored by
    BackupAndRestore continues with the clusters its weights were trained
    on; `train.py` gives no store and saves `cluster_state()` in its backup
    generations instead (`resume_from` restores it). Put this callback
    *before* BackupAndRestore / ModelCheckpoint in the callback list, so the
    weights they save already hold the grown masks.

    Args:
        sampler: the `ClusterBatchSampler` behind the training dataset.
        train_set: the training images, for the default `LocalReclusterer`
            (leave it out when you give `reclusterer`).
        k_final: final number of learners K.
        reclusterer: a `Reclusterer`: how features and ids are computed
            (default: `LocalReclusterer(train_set, **local_options)`).
        growth: "double" (TPAMI: K = 1, 2, 4, ... every T epochs) or
            "fixed" (CVPR: K = k_final from the first clustering).
        recluster_every: T.
        full_embedding_epoch: from this epoch on the loss uses the full
            embedding (None: never).
        final_k1_epochs: the last n epochs train on all data as one cluster.
        freeze_backbone_after_recluster: on the epoch right after each
            re-clustering only the embedding layer and masks learn.
        seed: base seed of k-means.
        state_dir: where the cluster state is saved (None: not saved).
        store: where cluster states go (default: `ClusterStateStore(state_dir)`).
        verbose: print a line per re-clustering.
        **local_options: without `reclusterer`, the `LocalReclusterer`'s
            options: image_size (required), resize_size, cluster_features,
            kmeans_iters, batch_size. The schedule itself never reads them.

    Examples:
        >>> from tfdnc.data.pipeline import make_train_dataset
        >>> from tfdnc.data.sampling import ClusterBatchSampler
        >>> from tfdnc.datasets import load_dataset
        >>> train, steps = load_dataset("shapes", num_classes=32, images_per_class=8).train, 8
        >>> model = tfdnc.DivideAndConquerModel(tfdnc.build_backbone("small_cnn", (32, 32, 3)), embedding_dim=16, k_final=2)
        >>> model.compile(optimizer="adam", loss=tfdnc.losses.MultiSimilarityLoss())
        >>> sampler = ClusterBatchSampler(train.labels, 4, 8)
        >>> ds = make_train_dataset(train, sampler, steps, 32)
        >>> schedule = DivideAndConquerSchedule(sampler, train, k_final=2, image_size=32, recluster_every=1, verbose=0)
        >>> history = model.fit(ds, steps_per_epoch=steps, epochs=2, callbacks=[schedule], verbose=0)
        >>> model.num_learners
        2
    """

    def __init__(
        self,
        sampler: ClusterBatchSampler,
        train_set: ImageSet | None = None,
        *,
        k_final: int,
        reclusterer: Reclusterer | None = None,
        growth: str = "double",
        recluster_every: int = 2,
        full_embedding_epoch: int | None = None,
        final_k1_epochs: int = 0,
        freeze_backbone_after_recluster: bool = False,
        seed: int = 0,
        state_dir: str | None = None,
        store: ClusterStateStore | None = None,
        verbose: int = 1,
        **local_options,
    ):
        super().__init__()
        self.policy = PhasePolicy(k_final=k_final, recluster_every=recluster_every, growth=growth,
                                  full_embedding_epoch=full_embedding_epoch, final_k1_epochs=final_k1_epochs,
                                  freeze_backbone_after_recluster=freeze_backbone_after_recluster)
        self.reclusterer = _reclusterer(train_set, reclusterer, local_options)
        self.labels = self.reclusterer.labels
        if len(self.labels) != len(sampler.labels):
            raise ValueError(f"DivideAndConquerSchedule: the reclusterer's training set has {len(self.labels)} "
                             f"images, the sampler {len(sampler.labels)}")
        feasible = clustering.max_feasible_k(self.labels)
        if k_final > feasible:
            raise clustering.ClusteringError(
                f"--k-final {k_final} is larger than the classes allow: every cluster needs >= 2 classes "
                f"with >= 2 images, and {self.reclusterer.train_set.name or 'the training set'} allows K <= {feasible}"
            )
        self.sampler = sampler
        self.seed = int(seed)
        self.verbose = verbose
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
        self.sampler.reset_publication()

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
        self.sampler.publish(epoch)

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
        self.sampler.close()

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
        """Re-clusters after `epoch` at the K the policy gives; the result applies from epoch + 1."""
        step = self.policy.recluster_step(self.k)
        self._apply(step, seed=self.seed + 1000 * (epoch + 1))
        self.last_recluster_epoch = epoch
        self._save(valid_from=epoch + 1)
        if self.verbose:
            print(f"\n[tfdnc] re-clustered after epoch {epoch + 1}: K={self.k}, "
                  f"cluster sizes {self.sampler.cluster_sizes()}", flush=True)

    def _apply(self, step: KStep, seed: int) -> None:
        """Clusters as `step` says (the reclusterer) and gives the result to the model and the sampler."""
        new = self.reclusterer.assign(self.clustering_features(), self.assignments, step, seed=seed)
        if new.k != step.new_k:
            raise RuntimeError(f"{type(self.reclusterer).__name__}.assign returned K={new.k}, the step asked "
                               f"for K={step.new_k}")
        if step.split:
            self.split_parents = new.split_parents  # the fresh partition the split divided, for inspection
            self.model.grow_learners()
        elif self.model.num_learners != step.new_k:
            self.model.set_num_learners(step.new_k)
        self._set(new.assignments, step.new_k)

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
            return
        step = self.policy.initial_step()
        if step is not None:  # CVPR: K is fixed from the first clustering
            self._apply(step, seed=self.seed)
            self._save(valid_from=epoch)
        else:
            self._set(np.zeros(len(self.labels), np.int64), 1)
            if self.model.num_learners != 1:
                self.model.set_num_learners(1)

    def _restore(self, state: ClusterState) -> None:
        if self.model.num_learners != state.k:
            raise RuntimeError(
                f"the restored cluster state ({self.store.directory or 'backup generation'}) has K={state.k} but the "
                "model's masks have "
                f"K={self.model.num_learners}: the weights and the cluster state come from "
                "different epochs (put DivideAndConquerSchedule before BackupAndRestore)"
            )
        self.history = state.history
        # valid_from 0: the first clustering (fixed growth), not a re-clustering.
        self.last_recluster_epoch = state.valid_from - 1 if state.valid_from > 0 else None
        self._set(state.assignments, state.k)

    def _save(self, valid_from: int) -> None:
        self.store.save(ClusterState(self.assignments, self.usable, self.k, valid_from, self.history))


def _reclusterer(train_set: ImageSet | None, reclusterer: Reclusterer | None, local_options: dict) -> Reclusterer:
    """The given reclusterer, or a `LocalReclusterer` of `train_set` with `local_options`; refuses a mix."""
    if reclusterer is None:
        if train_set is None:
            raise ValueError("DivideAndConquerSchedule: give `reclusterer=`, or the training set and "
                             "image_size= for a LocalReclusterer")
        return LocalReclusterer(train_set, **local_options)
    if train_set is not None or local_options:
        given = ["train_set"] * (train_set is not None) + sorted(local_options)
        raise ValueError(f"DivideAndConquerSchedule: {', '.join(given)} belong(s) to the reclusterer; "
                         "with `reclusterer=` leave them out")
    return reclusterer
