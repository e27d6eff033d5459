"""Backup generations: the weights, the cluster state and the random state of one epoch, committed together.

A long Divide & Conquer run is killed (preemption, an out-of-memory
evaluation, a user). What it needs to continue exactly where it was is more
than its weights: the clusters the weights were trained with, and the state
of the random generators. Written as separate files at separate times, a
kill between two writes leaves a mix of two epochs (issue 12: clusters of
epoch 3 with the weights of epoch 2, or a half-written weights file).

A *generation* is one folder, RUN_DIR/backup/gen-<N>/, holding everything
for "N epochs done":

    model.weights.h5   weights of the model and of its three optimizers
    clusters.npz       the cluster state valid from epoch N (`ClusterState`)
    random.npz         NumPy, Python and Keras random states (`random_state`)
    COMMIT             {"generation": N, "epoch": N, ...}, written last

It is written into a hidden temporary folder and renamed to gen-<N> only
when every file is complete and flushed (a rename is atomic on POSIX), and
COMMIT must name the same N as the folder. A folder without a matching
COMMIT is never read, so a kill at any instant leaves either the new
generation or the previous one. The previous generation is removed only
after the new one is committed (`keep` generations stay). COMMIT also
records the run's settings, so a resume can tell whether its config.json
still describes the generation (`tfdnc.training.backup.check_settings`). A
generation that is committed but does not load is never deleted: it is set
aside as `unloadable-gen-<N>` when an older one takes over.

Examples:
    >>> model = tfdnc.load_model("runs/default/model.keras")
    >>> store = GenerationStore("runs/a/backup")
    >>> generation = store.commit(3, lambda folder: model.save_weights(os.path.join(folder, WEIGHTS)))
    >>> store.latest().epoch
    3
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from typing import Callable

from tfdnc.rundir import COMMIT

WEIGHTS = "model.weights.h5"
CLUSTERS = "clusters.npz"
RANDOM = "random.npz"
FORMAT = "tfdnc-generation/1"
_NAME = re.compile(r"^gen-(\d{8})$")
_TEMP_PREFIX = ".tmp-gen-"
_UNLOADABLE_PREFIX = "unloadable-"


@dataclass(frozen=True)
class Generation:
    """One committed generation: `epoch` epochs are done; training continues at epoch `epoch` (0-based)."""

    directory: str
    generation: int
    epoch: int
    info: dict

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    @property
    def weights(self) -> str:
        return self.path(WEIGHTS)

    @property
    def clusters(self) -> str:
        return self.path(CLUSTERS)

    @property
    def random(self) -> str:
        return self.path(RANDOM)


class GenerationStore:
    """Commits and finds generations in one folder (RUN_DIR/backup).

    Args:
        directory: the backup folder (created on the first commit).
        keep: committed generations kept (>= 2: the newest and the one before).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        if keep < 1:
            raise ValueError(f"GenerationStore: `keep` must be >= 1, got {keep}")
        self.directory = os.fspath(directory)
        self.keep = int(keep)

    def __repr__(self) -> str:
        return f"GenerationStore({self.directory!r})"

    def committed(self) -> list[Generation]:
        """The complete generations, newest first (folders without a matching COMMIT are skipped)."""
        if not os.path.isdir(self.directory):
            return []
        found = []
        for name in os.listdir(self.directory):
            match = _NAME.match(name)
            if not match:
                continue
            folder = os.path.join(self.directory, name)
            try:
                with open(os.path.join(folder, COMMIT)) as f:
                    info = json.load(f)
            except (OSError, ValueError):
                continue  # renamed but COMMIT unreadable: cannot happen by our writes; never trust it
            if info.get("format") != FORMAT or info.get("generation") != int(match.group(1)):
                continue
            found.append(Generation(folder, int(match.group(1)), int(info["epoch"]), info))
        return sorted(found, key=lambda g: g.generation, reverse=True)

    def latest(self) -> Generation | None:
        """The newest complete generation, or None."""
        committed = self.committed()
        return committed[0] if committed else None

    def commit(self, generation: int, write: Callable[[str], None], info: dict | None = None,
               on_stage: Callable[[str, int], None] | None = None) -> Generation:
        """Writes a generation: `write(folder)` fills a temporary folder, which is then committed.

        `generation` is the number of epochs done; committing a number that
        already exists replaces it (a resumed run redoing that epoch).
        `on_stage(stage, generation)` is told "backup" once the files are
        written (COMMIT is not) and "committed" once the generation is
        committed (the older ones not pruned yet): the points where the
        fault-injection tests kill the process (`GenerationBackup` passes
        `tfdnc.training.faults.checkpoint_reached`).
        """
        on_stage = on_stage or (lambda stage, number: None)
        os.makedirs(self.directory, exist_ok=True)
        temp = os.path.join(self.directory, f"{_TEMP_PREFIX}{generation:08d}-{os.getpid()}")
        if os.path.exists(temp):
            shutil.rmtree(temp)
        os.makedirs(temp)
        write(temp)
        on_stage("backup", generation)
        record = {"format": FORMAT, "generation": int(generation), "epoch": int(generation), **(info or {})}
        with open(os.path.join(temp, COMMIT), "w") as f:
            json.dump(record, f)
        for name in os.listdir(temp):
            _fsync(os.path.join(temp, name))
        _fsync(temp)
        final = os.path.join(self.directory, f"gen-{generation:08d}")
        if os.path.exists(final):
            # Redoing an epoch after a resume: move the old one aside first, so a
            # kill between the two renames still leaves it (under a temp name the
            # next commit removes) and the previous generation intact.
            aside = os.path.join(self.directory, f"{_TEMP_PREFIX}{generation:08d}-old-{os.getpid()}")
            os.replace(final, aside)
            os.replace(temp, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(temp, final)
        _fsync(self.directory)
        on_stage("committed", generation)
        self.prune(keep_at_least=generation)
        return Generation(final, int(generation), int(generation), record)

    def clean(self) -> list[str]:
        """Removes temporary folders left by a killed writer; returns their names."""
        if not os.path.isdir(self.directory):
            return []
        removed = [n for n in os.listdir(self.directory) if n.startswith(_TEMP_PREFIX)]
        for name in removed:
            shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        return removed

    def set_aside(self, generation: Generation) -> str:
        """Renames a committed generation that does not load to `unloadable-gen-<N>[-<i>]`; returns the new path.

        It is kept for a look (a disk error, a file copied in by hand), out of
        the way of the commits of the run resumed from an older generation,
        which would otherwise replace it.
        """
        base = os.path.join(self.directory, f"{_UNLOADABLE_PREFIX}{os.path.basename(generation.directory)}")
        target, i = base, 1
        while os.path.exists(target):
            target, i = f"{base}-{i}", i + 1
        os.replace(generation.directory, target)
        _fsync(self.directory)
        return target

    def prune(self, keep_at_least: int | None = None) -> None:
        """Removes committed generations beyond the newest `keep` (none at or above `keep_at_least`)."""
        committed = self.committed()
        for g in committed[self.keep:]:
            if keep_at_least is None or g.generation < keep_at_least:
                shutil.rmtree(g.directory, ignore_errors=True)


def _fsync(path: str) -> None:
    """Flushes a file or folder to disk (a no-op where the OS does not allow it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
