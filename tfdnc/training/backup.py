"""Backing up a run at each epoch's end as one generation, and restoring the newest one.

`GenerationBackup` replaces Keras `BackupAndRestore` in `train.py`: at the
end of every epoch (after the schedule re-clustered and the evaluation ran)
it commits the weights, the schedule's cluster state and the random state
as one generation (`tfdnc.training.generations`). `restore_latest` loads the
newest complete generation before `fit` and returns the epoch to continue
at. Weights and clusters therefore always come from the same epoch, and a
kill at any instant leaves a generation that loads.

`save_model_atomic` writes a `.keras` file to a temporary name and renames
it, so a reader (an export started during training) sees the old file or
the new one, never half of one.

Example:
>>> store = GenerationStore("runs/a/backup")
>>> start = restore_latest(model, schedule, store)      # 0 on a fresh run
>>> model.fit(ds, epochs=10, initial_epoch=start, callbacks=[schedule, GenerationBackup(store, schedule)])
"""

from __future__ import annotations

import os

import keras

from tfdnc.training import faults
from tfdnc.training.cluster_state import ClusterState, ClusterStateStore
from tfdnc.training.generations import CLUSTERS, RANDOM, WEIGHTS, Generation, GenerationStore
from tfdnc.training.random_state import restore_random_state, save_random_state


class GenerationBackup(keras.callbacks.Callback):
    """Commits weights + cluster state + random state as one generation at each epoch's end.

    Put it after the schedule (whose re-clustering it saves) and after the
    evaluation (so a kill during a long evaluation redoes the epoch rather
    than resuming with an evaluation missing from the history).

    Args:
        store: the `GenerationStore` (RUN_DIR/backup).
        schedule: the `DivideAndConquerSchedule` whose `cluster_state()` is saved.
    """

    def __init__(self, store: GenerationStore, schedule):
        super().__init__()
        self.store = store
        self.schedule = schedule
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        steps = (self.params or {}).get("steps") or 2
        if batch + 1 == max(1, steps // 2):
            faults.kill_point("mid_epoch", epoch=self._epoch + 1)

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        state = self.schedule.cluster_state()

        def write(folder: str) -> None:
            self.model.save_weights(os.path.join(folder, WEIGHTS))
            ClusterStateStore.write_state(os.path.join(folder, CLUSTERS), state)
            save_random_state(os.path.join(folder, RANDOM), self.model)

        self.store.commit(done, write, info={"K": int(state.k)})


def restore_latest(model: keras.Model, schedule, store: GenerationStore, verbose: int = 1, *,
                   generation: int | None = None, writer: bool = True) -> int:
    """Loads the newest complete generation into `model` and `schedule`; returns the epoch to start at.

    A generation that fails to load (a disk error after its commit) is
    reported and the one before it is tried. With none, the run starts at
    epoch 0 and the schedule clusters afresh.

    Args:
        generation: load exactly this one (a multi-worker run: the chief's
            choice, given to every worker); 0 means none, start afresh.
        writer: whether this process may tidy the folder (the chief; other
            workers only read).
    """
    if writer:
        removed = store.clean()
        if removed and verbose:
            print(f"[tfdnc] removed {len(removed)} unfinished backup folder(s) in {store.directory} "
                  "(a run killed while writing its backup)")
    candidates = store.committed()
    if generation is not None:
        candidates = [g for g in candidates if g.generation == generation]
        if generation and not candidates:
            raise FileNotFoundError(
                f"backup generation {generation} chosen by the chief is not in {store.directory!r} on this worker: "
                "a multi-worker --resume needs the run directory on storage every worker can read")
    for found in candidates:
        try:
            state = _load(model, schedule, found)
        except (OSError, ValueError, KeyError) as exc:
            if generation is not None:
                raise
            print(f"[tfdnc] backup generation {found.directory} does not load ({exc}); trying the previous one")
            continue
        if writer:
            store.discard_after(found.generation)
        if verbose:
            print(f"[tfdnc] resuming from {found.directory}: {found.epoch} epoch(s) done, K={state.k}")
        return found.epoch
    schedule.resume_from(None)
    if verbose:
        print(f"[tfdnc] no complete backup generation in {store.directory}; starting from epoch 1")
    return 0


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


__all__ = ["AtomicModelCheckpoint", "GenerationBackup", "restore_latest", "save_model_atomic"]
