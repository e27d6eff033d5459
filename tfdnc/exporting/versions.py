"""TF Serving's model layout: BASE/NAME/VERSION/, VERSION a positive integer.

TF Serving watches BASE/NAME and loads new integer-named folders as they
appear, so a version must appear complete: it is written under a hidden
staging name (which TF Serving ignores, not being an integer) and renamed
into place, which is atomic on one file system.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator


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
    os.makedirs(model_dir, exist_ok=True)
    staged = StagedVersion(model_dir, tempfile.mkdtemp(prefix=".staging-", dir=model_dir), version)
    try:
        yield staged
        staged.version = _rename_into_place(staged.staging, model_dir, version)
    except BaseException:
        shutil.rmtree(staged.staging, ignore_errors=True)
        raise


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
