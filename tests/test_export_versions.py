"""TF Serving version folders: numbering, atomic placement, no overwrites."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tfdnc.exporting.versions import STALE_AFTER_SECONDS
from tfdnc.exporting.versions import list_versions, next_version, resolve_version_dir, staged_version


def test_only_positive_integer_folders_are_versions(tmp_path):
    for name in ("3", "10", "0", "x1", ".staging-abc"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert list_versions(tmp_path) == [3, 10]
    assert next_version(tmp_path) == 11
    assert next_version(tmp_path / "missing") == 1


def test_version_taken_during_export_moves_to_the_next_free(tmp_path):
    with staged_version(tmp_path, None) as staged:
        (tmp_path / "1").mkdir()  # a concurrent export claims 1 meanwhile
        (tmp_path / "1" / "saved_model.pb").write_bytes(b"other")
        (open(os.path.join(staged.staging, "saved_model.pb"), "wb")).close()
    assert staged.version == 2
    assert os.path.isfile(tmp_path / "2" / "saved_model.pb")
    assert (tmp_path / "1" / "saved_model.pb").read_bytes() == b"other"
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_explicit_version_appearing_during_export_is_not_overwritten(tmp_path):
    with pytest.raises(FileExistsError, match="never overwritten"):
        with staged_version(tmp_path, 4) as staged:
            (tmp_path / "4").mkdir()
            (tmp_path / "4" / "keep").write_text("x")
            assert os.path.isdir(staged.staging)
    assert sorted(os.listdir(tmp_path)) == ["4"]  # staging folder removed
    assert (tmp_path / "4" / "keep").read_text() == "x"


def test_failure_inside_the_block_leaves_nothing(tmp_path):
    with pytest.raises(KeyError):
        with staged_version(tmp_path, None) as staged:
            (open(os.path.join(staged.staging, "partial"), "w")).close()
            raise KeyError("boom")
    assert os.listdir(tmp_path) == []


def test_bad_versions_and_resolution(tmp_path):
    with pytest.raises(ValueError, match="positive integer"):
        with staged_version(tmp_path, 0):
            pass
    with pytest.raises(FileNotFoundError, match="BASE/NAME/VERSION"):
        resolve_version_dir(tmp_path)
    for v in ("2", "12"):
        (tmp_path / v).mkdir()
        (tmp_path / v / "saved_model.pb").write_bytes(b"")
    assert resolve_version_dir(tmp_path) == str(tmp_path / "12")
    assert resolve_version_dir(tmp_path / "2") == str(tmp_path / "2")


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def this_host(model_dir) -> str:
    """HOST in the .staging-PID@HOST.RANDOM name this machine gives (read off a real one)."""
    with pytest.raises(KeyError):
        with staged_version(model_dir, None) as staged:
            name = os.path.basename(staged.staging)
            raise KeyError("discard")
    pid, rest = name[len(".staging-"):].split("@", 1)
    assert int(pid) == os.getpid()
    return rest.rsplit(".", 1)[0]


def staging(tmp_path, name, age_seconds=0.0):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"partial")
    then = time.time() - age_seconds
    for path in (folder / "saved_model.pb", folder):
        os.utime(path, (then, then))
    return folder


def test_stale_staging_folders_of_killed_exports_are_removed(tmp_path):
    host = this_host(tmp_path.parent / f"{tmp_path.name}-probe")
    day = STALE_AFTER_SECONDS
    killed = staging(tmp_path, f".staging-{dead_pid()}@{host}.abc123")
    running = staging(tmp_path, f".staging-{os.getpid()}@{host}.def456", age_seconds=3 * day)
    other_host_old = staging(tmp_path, f".staging-{dead_pid()}@elsewhere.gh789", age_seconds=2 * day)
    other_host_new = staging(tmp_path, f".staging-{dead_pid()}@elsewhere.ij012")
    legacy_old = staging(tmp_path, ".staging-k3l_9z", age_seconds=2 * day)
    legacy_new = staging(tmp_path, ".staging-m4n_0y")
    with staged_version(tmp_path, None) as staged:
        (open(os.path.join(staged.staging, "saved_model.pb"), "wb")).close()
    left = set(os.listdir(tmp_path))
    assert left == {"1", running.name, other_host_new.name, legacy_new.name}
    assert not {killed.name, other_host_old.name, legacy_old.name} & left
    # What a running export writes is untouched.
    assert (running / "saved_model.pb").read_bytes() == b"partial"


def test_staging_folder_names_its_process_while_the_export_runs(tmp_path):
    with staged_version(tmp_path, None) as staged:
        name = os.path.basename(staged.staging)
        assert name.startswith(f".staging-{os.getpid()}@")
        # A second export meanwhile (same process: alive) keeps the first's folder.
        with staged_version(tmp_path, None) as second:
            assert os.path.isdir(staged.staging)
            (open(os.path.join(second.staging, "saved_model.pb"), "wb")).close()
        (open(os.path.join(staged.staging, "saved_model.pb"), "wb")).close()
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]
