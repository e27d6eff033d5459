"""TF Serving version folders: numbering, atomic placement, no overwrites."""

from __future__ import annotations

import os

import pytest

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
