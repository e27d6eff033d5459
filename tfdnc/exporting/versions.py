"""TF Serving's model layout: BASE/NAME/VERSION/, VERSION a positive integer.

TF Serving watches BASE/NAME and loads new integer-named folders as they
appear, so a version must appear complete: it is written under a hidden
staging name (which TF Serving ignores, not being an integer) and renamed
into place, which is atomic on one file system.

A staging folder is named `.staging-PID@HOST.RANDOM`. An export killed before
its rename leaves one behind; the next export of the model removes it once it
is stale: written on this host by a process that no longer runs, or (another
host's, or an old unnamed one) untouched for `STALE_AFTER_SECONDS`. A running
export's folder is never removed.

Versions are made readable by every user (folders 0755, files 0644): TF
Serving often runs as another user than the one who exported.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator

STAGING_PREFIX = ".staging-"
# A staging folder of another host (whose pids this host cannot check) or of
# an older tfdnc (no pid in its name) is stale after a day without a write.
STALE_AFTER_SECONDS = 24 * 3600
DIR_MODE = 0o755
FILE_MODE = 0o644


def list_versions(model_dir: str | os.PathLike) -> list[int]:
    """Sorted integer versions present under `model_dir` (BASE/NAME)."""
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        return []
    return sorted(
        int(entry)
        for entry in os.listdir(model_dir)
        if entry.isdigit() and int(entry) > 0 and os.path.isdir(os.path.join(model_dir, entry))
    )


def next_version(model_dir: str | os.PathLike) -> int:
    """One more than the largest version present (1 for a new model)."""
    versions = list_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def resolve_version_dir(path: str | os.PathLike) -> str:
    """A version folder itself, or BASE/NAME -> its latest version folder."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = list_versions(path)
    if not versions:
        raise FileNotFoundError(
            f"{path!r} is neither a SavedModel folder (no saved_model.pb) nor a model folder "
            "with integer version subfolders (BASE/NAME/VERSION)"
        )
    return os.path.join(path, str(versions[-1]))


class StagedVersion:
    """Where an export is being written (`staging`) and, once in place, its version."""

    def __init__(self, model_dir: str, staging: str, version: int | None):
        self.model_dir = model_dir
        self.staging = staging
        self.version: int | None = version

    @property
    def path(self) -> str:
        """The final BASE/NAME/VERSION folder (valid once the block has ended)."""
        if self.version is None:
            raise RuntimeError("the export is not in place yet")
        return os.path.join(self.model_dir, str(self.version))


@contextmanager
def staged_version(model_dir: str | os.PathLike, version: int | None) -> Iterator[StagedVersion]:
    """Yields a `StagedVersion`; on success renames its folder to model_dir/VERSION.

    An explicit `version` that already exists is an error (never overwritten);
    with `version=None` the next free number is taken at rename time, so two
    concurrent exports of one model get different versions.
    """
    model_dir = os.fspath(model_dir)
    if version is not None:
        if int(version) < 1:
            raise ValueError(f"export version must be a positive integer, got {version}")
        version = int(version)
        _check_free(model_dir, version)
    staged = StagedVersion(model_dir, make_staging_dir(model_dir), version)
    try:
        yield staged
        make_world_readable(staged.staging)
        staged.version = _rename_into_place(staged.staging, model_dir, version)
    except BaseException:
        shutil.rmtree(staged.staging, ignore_errors=True)
        raise


def make_staging_dir(parent: str | os.PathLike, prefix: str = STAGING_PREFIX) -> str:
    """A new private folder PARENT/PREFIX+PID@HOST.RANDOM, after removing the stale ones of `prefix`.

    The name says which process owns the folder, so the next caller removes
    what a killed one left behind (see `remove_stale_staging`). Besides
    export staging, a Milvus Lite index is built in one (`tfdnc.index`).
    """
    parent = os.fspath(parent)
    os.makedirs(parent, exist_ok=True)
    remove_stale_staging(parent, prefix=prefix)
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}@{_host()}.", dir=parent)


def remove_stale_staging(model_dir: str | os.PathLike, now: float | None = None, *,
                         prefix: str = STAGING_PREFIX) -> list[str]:
    """Removes the staging folders (named `prefix`...) of dead processes under `model_dir`; returns their paths.

    Stale: named by a process of this host that no longer runs, or (another
    host's, or without a pid) nothing in it written for `STALE_AFTER_SECONDS`.
    """
    model_dir = os.fspath(model_dir)
    now = time.time() if now is None else now
    name = re.compile(rf"^{re.escape(prefix)}(?P<pid>\d+)@(?P<host>.+)\.[^.]+$")
    removed = []
    for entry in sorted(os.listdir(model_dir)) if os.path.isdir(model_dir) else []:
        path = os.path.join(model_dir, entry)
        if entry.startswith(prefix) and os.path.isdir(path) and _is_stale(name.match(entry), path, now):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def make_world_readable(root: str | os.PathLike) -> None:
    """Folders under `root` (itself included) 0755, files 0644.

    `tempfile.mkdtemp` makes the staging folder 0700, and a restrictive umask
    would do the same to what the exporter writes; TF Serving running as
    another user needs to list the folders and read the files.
    """
    root = os.fspath(root)
    os.chmod(root, DIR_MODE)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), DIR_MODE)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, FILE_MODE)


def _host() -> str:
    # Dots separate the random suffix; keep the name one path component.
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _is_stale(match: re.Match | None, path: str, now: float) -> bool:
    if match and match["host"] == _host():
        return not _process_alive(int(match["pid"]))
    return now - _last_write(path) > STALE_AFTER_SECONDS


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def _last_write(path: str) -> float:
    latest = os.path.getmtime(path)
    for dirpath, _, filenames in os.walk(path):
        latest = max(latest, os.path.getmtime(dirpath))
        for name in filenames:
            try:
                latest = max(latest, os.path.getmtime(os.path.join(dirpath, name)))
            except OSError:
                pass
    return latest


def _check_free(model_dir: str, version: int) -> None:
    target = os.path.join(model_dir, str(version))
    if os.path.exists(target):
        raise FileExistsError(
            f"export version {target!r} already exists; versions are never overwritten "
            "(give another version or leave it out for the next free one)"
        )


def _rename_into_place(staging: str, model_dir: str, version: int | None) -> int:
    for _ in range(100):
        if version is not None:
            _check_free(model_dir, version)  # it may have appeared while exporting
        chosen = version if version is not None else next_version(model_dir)
        target = os.path.join(model_dir, str(chosen))
        if os.path.exists(target):
            continue  # taken by a concurrent export since next_version()
        try:
            # One atomic rename: TF Serving never sees a half-written version.
            os.rename(staging, target)
        except OSError:
            if version is not None or not os.path.exists(target):
                raise
            continue
        return chosen
    raise RuntimeError(f"could not claim a free version under {model_dir!r}")
