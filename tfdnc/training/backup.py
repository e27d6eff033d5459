"""Backing up a run at each epoch's end as one generation, and restoring the newest one.

`GenerationBackup` replaces Keras `BackupAndRestore` in `train.py`: at the
end of every epoch (after the schedule re-clustered and the evaluation ran)
it commits the weights, the schedule's cluster state and the random state
as one generation (`tfdnc.training.generations`). `restore_latest` loads the
newest complete generation before `fit` and returns the epoch to continue
at. Weights and clusters therefore always come from the same epoch, and a
kill at any instant leaves a generation that loads.

Each generation's COMMIT records the run's settings; `check_settings`
refuses a resume whose config.json no longer matches them (an edited
`embedding_dim` would not load, and starting over would destroy the run).
A generation that does not load for another reason is set aside, never
deleted, and the one before it is used; when none loads the resume is
refused (`ResumeRefusedError`) with the run directory left as it was.

`save_model_atomic` writes a `.keras` file to a temporary name and renames
it, so a reader (an export started during training) sees the old file or
the new one, never half of one.

Examples:
    >>> from tfdnc.data.pipeline import make_train_dataset
    >>> from tfdnc.data.sampling import ClusterBatchSampler
    >>> from tfdnc.datasets import load_dataset
    >>> train, steps = load_dataset("shapes", num_classes=32, images_per_class=8).train, 8
    >>> model = tfdnc.DivideAndConquerModel(tfdnc.build_backbone("small_cnn", (32, 32, 3)), embedding_dim=16, k_final=2)
    >>> model.compile(optimizer="adam", loss=tfdnc.losses.MultiSimilarityLoss())
    >>> from tfdnc.training import DivideAndConquerSchedule
    >>> sampler = ClusterBatchSampler(train.labels, 4, 8)
    >>> ds = make_train_dataset(train, sampler, steps, 32)
    >>> schedule = DivideAndConquerSchedule(sampler, train, k_final=2, image_size=32, recluster_every=1, verbose=0)
    >>> store = GenerationStore("runs/a/backup")
    >>> start = restore_latest(model, schedule, store, verbose=0)      # 0 on a fresh run
    >>> history = model.fit(ds, steps_per_epoch=steps, epochs=2, initial_epoch=start, verbose=0,
    ...                     callbacks=[schedule, GenerationBackup(store, schedule)])
    >>> store.latest().epoch
    2
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Iterable

import keras
import numpy as np

from tfdnc import rundir
from tfdnc.training import faults  # test-only kill points: this callback is the one production caller
from tfdnc.training.cluster_state import ClusterState, ClusterStateStore
from tfdnc.training.generations import CLUSTERS, RANDOM, WEIGHTS, Generation, GenerationStore
from tfdnc.training.random_state import restore_random_state, save_random_state

SETTINGS = "settings"  # the key of a generation's COMMIT that holds the run's settings
# Settings that say where files are, not what trains: a run directory copied to
# another machine finds its data and its decoded-image cache elsewhere.
LOCATION_SETTINGS = ("data_dir", "cache_dir")


class ResumeRefusedError(ValueError):
    """A `--resume` that cannot continue its run; raised before anything in the run directory changed.

    Examples:
        >>> check_settings(store, config.to_dict(), may_differ=("epochs",), config_path="runs/a/config.json")  # doctest: +SKIP
        ResumeRefusedError: --resume: runs/a/config.json does not match the run's backup generation
        runs/a/backup/gen-00000002: embedding_dim: 64 in the generation, 32 in runs/a/config.json. ...
    """


def settings_record(settings: dict) -> dict:
    """`settings` as a generation's COMMIT stores them (JSON: tuples become lists, NumPy numbers numbers)."""
    return json.loads(json.dumps(settings, default=lambda value: np.asarray(value).tolist()))


def check_settings(store: GenerationStore, settings: dict, *, may_differ: Iterable[str] = (),
                   config_path: str = "config.json") -> None:
    """Raises `ResumeRefusedError` naming each setting in which `settings` differ from the newest generation's.

    Reads only: call it before a resume writes anything. Settings in
    `may_differ` (what a resume may change) and `LOCATION_SETTINGS` are not
    compared; nor are settings a generation did not record (written by an
    older tfdnc: loading it will tell).

    Args:
        store: the run's generations.
        settings: the resumed run's settings (`TrainConfig.to_dict()`).
        may_differ: names a resume may change (`tfdnc.config.RESUME_OVERRIDES`).
        config_path: the file the settings come from, for the message.
    """
    allowed = set(may_differ) | set(LOCATION_SETTINGS)
    current = settings_record(settings)
    for found in store.committed():
        recorded = found.info.get(SETTINGS)
        if not isinstance(recorded, dict):
            continue
        differing = [name for name in sorted(recorded)
                     if name in current and name not in allowed and recorded[name] != current[name]]
        if differing:
            flags = ", ".join("--" + name.replace("_", "-") for name in sorted(set(may_differ)))
            raise ResumeRefusedError(
                f"--resume: {config_path} does not match the run's backup generation {found.directory}: "
                + "; ".join(f"{name}: {json.dumps(recorded[name])} in the generation, "
                            f"{json.dumps(current[name])} in {config_path}" for name in differing)
                + f". Nothing was changed; put the setting(s) back, or train a new run in another --run-dir "
                f"(a resume may change only {flags})")
        return


class GenerationBackup(keras.callbacks.Callback):
    """Commits weights + cluster state + random state as one generation at each epoch's end.

    The generations are the run's one store of cluster state: the schedule
    of `train.py` writes no cluster files of its own, and RUN_DIR/clusters.npz
    is a copy of the newest committed generation's, for reading (a resume
    reads the generation, never the copy).

    Put it last: after the schedule (whose re-clustering it saves), the
    evaluation (so a kill during a long evaluation redoes the epoch rather
    than resuming with an evaluation missing from the history), and the
    callbacks that write the epoch's files (history, last.keras,
    `FlushingTensorBoard`), so that a committed epoch has all of them.

    Args:
        store: the `GenerationStore` (RUN_DIR/backup).
        schedule: the `DivideAndConquerSchedule` whose `cluster_state()` is saved.
        settings: the run's settings (`TrainConfig.to_dict()`), recorded in
            each COMMIT for `check_settings`.
        clusters_copy: where the committed cluster state is copied for reading
            (None: nowhere); "auto": RUN_DIR/clusters.npz when `store` is a run
            directory's backup folder (`clusters_copy_path`).
    """

    def __init__(self, store: GenerationStore, schedule, settings: dict | None = None,
                 clusters_copy: str | None = "auto"):
        super().__init__()
        self.store = store
        self.schedule = schedule
        self.settings = settings_record(settings) if settings is not None else None
        self.clusters_copy = clusters_copy_path(store) if clusters_copy == "auto" else clusters_copy
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        steps = (self.params or {}).get("steps") or 2
        if batch + 1 == max(1, steps // 2):
            faults.checkpoint_reached("mid_epoch", epoch=self._epoch + 1)

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        state = self.schedule.cluster_state()
        if state.valid_from == done and done > 0:  # the schedule re-clustered after this epoch
            faults.checkpoint_reached("after_recluster", epoch=done)

        def write(folder: str) -> None:
            self.model.save_weights(os.path.join(folder, WEIGHTS))
            ClusterStateStore.write_state(os.path.join(folder, CLUSTERS), state)
            save_random_state(os.path.join(folder, RANDOM), self.model)

        info = {"K": int(state.k)}
        if self.settings is not None:
            info[SETTINGS] = self.settings
        committed = self.store.commit(done, write, info=info, on_stage=faults.checkpoint_reached)
        if self.clusters_copy is not None:
            _copy_atomic(committed.clusters, self.clusters_copy)


def clusters_copy_path(store: GenerationStore) -> str | None:
    """RUN_DIR/clusters.npz when `store` is RUN_DIR/backup (the `tfdnc.rundir` layout), else None."""
    parent, name = os.path.split(os.path.abspath(store.directory))
    return rundir.RunDir(parent).clusters if name == rundir.BACKUP else None


def _copy_atomic(source: str, target: str) -> None:
    """Copies `source` to `target` through a temporary file and a rename: readers never see half a file."""
    temp = f"{target}.tmp-{os.getpid()}"
    shutil.copyfile(source, temp)
    os.replace(temp, target)


def restore_latest(model: keras.Model, schedule, store: GenerationStore, verbose: int = 1, *,
                   generation: int | None = None, writer: bool = True) -> int:
    """Loads the newest complete generation into `model` and `schedule`; returns the epoch to start at.

    A generation that fails to load (a disk error after its commit, a file
    replaced by hand) is reported and the one before it is tried; once one
    loads, those that did not are set aside (`unloadable-gen-<N>`), never
    deleted. When generations exist and none loads, `ResumeRefusedError`
    is raised with the folder untouched: the run is never restarted over
    them. With no generation at all, the run starts at epoch 0 and the
    schedule clusters afresh.

    The writer also finishes what a kill right after a commit left undone:
    half-written folders are removed and generations beyond `store.keep`
    pruned, as at the end of an uninterrupted run.

    Args:
        generation: load exactly this one (a multi-worker run: the chief's
            choice, given to every worker); 0 means none, start afresh.
        writer: whether this process may tidy the folder (the chief; other
            workers only read).
    """
    candidates = store.committed()
    if generation is not None:
        candidates = [g for g in candidates if g.generation == generation]
        if generation and not candidates:
            raise FileNotFoundError(
                f"backup generation {generation} chosen by the chief is not in {store.directory!r} on this worker: "
                "a multi-worker --resume needs the run directory on storage every worker can read")
    failed = []
    for found in candidates:
        try:
            state = _load(model, schedule, found)
        except (OSError, ValueError, KeyError) as exc:
            if generation is not None:
                raise
            failed.append((found, _first_line(exc)))
            print(f"[tfdnc] backup generation {found.directory} does not load ({_first_line(exc)}); "
                  "trying the previous one")
            continue
        if writer:
            _tidy_after_load(store, found, [bad for bad, _ in failed], verbose)
        if verbose:
            print(f"[tfdnc] resuming from {found.directory}: {found.epoch} epoch(s) done, K={state.k}")
        return found.epoch
    if failed:
        raise ResumeRefusedError(
            f"--resume: no backup generation in {store.directory} loads ("
            + "; ".join(f"{os.path.basename(g.directory)}: {why}" for g, why in failed)
            + "). Nothing was changed; the run cannot continue from these files: train a new run in another "
            "--run-dir, or restore the backup folder from a copy")
    if writer:
        _remove_unfinished(store, verbose)
    schedule.resume_from(None)
    if verbose:
        print(f"[tfdnc] no complete backup generation in {store.directory}; starting from epoch 1")
    return 0


def _tidy_after_load(store: GenerationStore, loaded: Generation, failed: list, verbose: int) -> None:
    """What a writer finishes once a generation loaded: unfinished folders, set-asides, pruning, the copy."""
    _remove_unfinished(store, verbose)
    for bad in failed:
        print(f"[tfdnc] kept the backup generation that does not load as {store.set_aside(bad)}")
    store.prune()
    copy = clusters_copy_path(store)
    if copy is not None:  # a kill after a commit may have left the copy one generation old
        _copy_atomic(loaded.clusters, copy)


def _remove_unfinished(store: GenerationStore, verbose: int) -> None:
    removed = store.clean()
    if removed and verbose:
        print(f"[tfdnc] removed {len(removed)} unfinished backup folder(s) in {store.directory} "
              "(a run killed while writing its backup)")


def _first_line(error: BaseException) -> str:
    """An exception's first non-empty line (Keras's load errors run over many lines)."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _load(model: keras.Model, schedule, generation: Generation) -> ClusterState:
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # its slots must exist to receive their values
    model.load_weights(generation.weights)
    state = ClusterStateStore.read(generation.clusters)
    restore_random_state(generation.random, model)
    schedule.resume_from(state)
    return state


def save_model_atomic(model: keras.Model, path: str) -> None:
    """`model.save(path)` through a temporary file and a rename: readers never see half a file."""
    folder, name = os.path.split(os.path.abspath(path))
    temp = os.path.join(folder, f".{name}.tmp-{os.getpid()}.keras")
    try:
        model.save(temp)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


class AtomicModelCheckpoint(keras.callbacks.Callback):
    """Saves the whole model to one `.keras` file at each epoch's end, atomically (see `save_model_atomic`).

    Args:
        path: the `.keras` file (RUN_DIR/checkpoints/last.keras).
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = os.fspath(path)

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        save_model_atomic(self.model, self.path)


class FlushingTensorBoard(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard` whose epoch summaries are on disk when `on_epoch_end` returns.

    Keras flushes its summary writers when their queue fills, every two
    minutes, or at the end of `fit`; a run killed in between loses those
    epochs from TensorBoard although its backup holds them. Put it before
    `GenerationBackup`: once an epoch's generation is committed, the epoch
    is in TensorBoard.

    Examples:
        >>> callbacks = [schedule, FlushingTensorBoard("runs/a/logs"), GenerationBackup(store, schedule)]  # doctest: +SKIP
    """

    def on_train_batch_end(self, batch, logs=None):
        # With update_freq="epoch" Keras pushes no writer for batches (keras/src/callbacks/tensorboard.py,
        # _push_writer), yet its on_train_batch_end still calls summary.scalar for every log, writing
        # nothing at about 0.2 ms of CPU a step (five such calls timed alone; 0.5 % of a suite step).
        # The graph (first batch) and a profile (profile_batch) still go through Keras.
        if self.update_freq == "epoch" and not self._should_write_train_graph and not self._should_trace:
            return
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        # Keras keeps its writers in `_writers` (keras/src/callbacks/tensorboard.py, set_model)
        # and offers no public flush.
        for writer in self._writers.values():
            writer.flush()


__all__ = ["AtomicModelCheckpoint", "FlushingTensorBoard", "GenerationBackup", "ResumeRefusedError",
           "check_settings", "restore_latest", "save_model_atomic", "settings_record"]
