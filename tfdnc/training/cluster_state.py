"""The cluster state of a Divide & Conquer run, and where it is kept.

A `ClusterState` is one generation of the clustering: the assignment of
every training image, which images the sampler may draw, K, and the epoch
from which it applies (`valid_from`, its generation).

A run keeps its cluster states in one place. `python train.py` keeps them in
its backup generations, with the weights of the same epoch
(`tfdnc.training.backup.GenerationBackup`, which writes them with
`ClusterStateStore.write_state` and reads them with `ClusterStateStore.read`).
A run without generations (`model.fit` with Keras's `BackupAndRestore`, a
`DistributedSchedule` given a `state_dir`) gives the schedule a
`ClusterStateStore`, which keeps the newest two generations in
DIR/clusters.npz and clusters.prev.npz (names from `tfdnc.rundir`), so a run
restored from a checkpoint one epoch older than the newest clustering still
finds the clustering its weights were trained with.

Examples:
    >>> store = ClusterStateStore("runs/default")
    >>> assignments, usable = np.arange(100) % 2, np.ones(100, bool)
    >>> store.save(ClusterState(assignments, usable, k=2, valid_from=4))
    >>> store.load(epoch=5).k           # the newest generation valid at epoch 5
    2
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from tfdnc import rundir
from tfdnc.utils.npz import read_npz


@dataclass
class ClusterState:
    """One generation of the clustering.

    Attributes:
        assignments: (N,) int64 cluster id of every training image.
        usable: (N,) bool, images the sampler may draw.
        k: the number of clusters (learners).
        valid_from: the first epoch trained with it (its generation).
        history: the schedule's per-epoch records up to it (for a resumed run).
    """

    assignments: np.ndarray
    usable: np.ndarray
    k: int
    valid_from: int
    history: list[dict] = field(default_factory=list)

    @property
    def generation(self) -> int:
        return self.valid_from


class ClusterStateStore:
    """Saves and loads cluster-state generations in a directory.

    Args:
        directory: where the files live (None: nothing is kept).
        read_only: load but never write (the workers other than the chief).
    """

    def __init__(self, directory: str | os.PathLike | None, *, read_only: bool = False):
        self.directory = None if directory is None else os.fspath(directory)
        self.read_only = bool(read_only)

    @property
    def paths(self) -> tuple[str, str]:
        """(newest, previous) file paths."""
        run = rundir.RunDir(self.directory or "")
        return run.clusters, run.clusters_previous

    def save(self, state: ClusterState) -> None:
        """Writes `state` as the newest generation; the newest so far becomes the previous."""
        if not self.directory or self.read_only:
            return
        os.makedirs(self.directory, exist_ok=True)
        current, previous = self.paths
        tmp = current + ".tmp.npz"
        self.write_state(tmp, state)
        if os.path.exists(current):
            os.replace(current, previous)
        os.replace(tmp, current)

    @staticmethod
    def write_state(path: str, state: ClusterState) -> None:
        """Writes one `ClusterState` to the .npz file `path` (as it is; no rotation)."""
        with open(path, "wb") as f:
            np.savez(f, assignments=np.asarray(state.assignments, np.int64), usable=np.asarray(state.usable, bool),
                     k=int(state.k), valid_from=int(state.valid_from), history=json.dumps(state.history))

    @staticmethod
    def read(path: str) -> ClusterState:
        """Reads one `ClusterState` from the .npz file `path` (OSError / ValueError when unreadable,
        `UnsafeFileError` for a pickle inside: never unpickled)."""
        values = read_npz(path, what="cluster state")
        history = json.loads(str(values["history"])) if "history" in values else []
        return ClusterState(np.asarray(values["assignments"], np.int64), np.asarray(values["usable"], bool),
                            int(values["k"]), int(values["valid_from"]), history)

    def generations(self) -> list[ClusterState]:
        """The readable generations kept, oldest first (unreadable files are reported and skipped)."""
        if not self.directory:
            return []
        states = []
        for path in self.paths:
            if not os.path.exists(path):
                continue
            try:
                states.append(self.read(path))
            except (OSError, ValueError, KeyError) as exc:
                print(f"[tfdnc] ignoring unreadable cluster state {path}: {exc}")
        return sorted(states, key=lambda s: s.valid_from)

    def load(self, epoch: int) -> ClusterState | None:
        """The newest generation that applies at `epoch` (valid_from <= epoch), or None.

        Its history keeps only the records of the epochs before `epoch`.
        """
        valid = [s for s in self.generations() if s.valid_from <= epoch]
        if not valid:
            return None
        state = valid[-1]
        state.history = [h for h in state.history if h["epoch"] < epoch]
        return state
