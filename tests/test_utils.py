"""The shared helpers in tfdnc.utils, against plain NumPy / file-system expectations."""

import json
import os

import numpy as np
import pytest

from tfdnc.utils import IMAGE_EXTENSIONS, is_image_file, l2_normalize, list_image_files, read_json, write_json


def test_l2_normalize_unit_rows_and_zero_rows_stay_zero():
    x = np.random.default_rng(0).normal(size=(5, 7))
    x[2] = 0.0
    y = l2_normalize(x)
    norms = np.linalg.norm(y, axis=1)
    np.testing.assert_allclose(np.delete(norms, 2), 1.0, rtol=1e-6)
    assert np.all(y[2] == 0)
    np.testing.assert_allclose(y[0], x[0] / np.sqrt((x[0] ** 2).sum()), rtol=1e-6)
    assert y.dtype == np.float32


def test_l2_normalize_numpy_and_tensor_twins_agree_along_any_axis():
    import keras

    from tfdnc.utils import l2_normalize_tensor

    x = np.random.default_rng(1).normal(size=(4, 6, 3)).astype(np.float32)
    x[1, :, 0] = 0.0
    x[2, 3] *= 1e-9  # below the epsilon floor on the squared norm: both scale it alike
    for axis in (0, 1, -1):
        np.testing.assert_allclose(l2_normalize(x, axis=axis),
                                   keras.ops.convert_to_numpy(l2_normalize_tensor(x, axis=axis)),
                                   rtol=1e-5, atol=1e-6)


def test_list_image_files_recursive_sorted_every_extension(tmp_path):
    for rel in ["b/2.PNG", "a/1.jpg", "a/deep/3.webp", "a/.hidden.jpg", "a/notes.txt", "c.bmp"]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    found = [os.path.relpath(p, tmp_path) for p in list_image_files(tmp_path)]
    assert found == sorted(found)
    assert set(found) == {"b/2.PNG", "a/1.jpg", "a/deep/3.webp", "c.bmp"}
    assert ".webp" in IMAGE_EXTENSIONS and is_image_file("x.JPEG") and not is_image_file(".x.jpg")


def test_list_image_files_errors_name_the_folder(tmp_path):
    with pytest.raises(NotADirectoryError, match="--data-dir .*missing"):
        list_image_files(tmp_path / "missing", what="--data-dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        list_image_files(tmp_path / "empty")


def test_json_round_trip_with_numpy_values_and_no_temp_left(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"a": np.int64(3), "b": np.float32(0.5), "c": np.arange(3), "d": np.bool_(True)})
    assert read_json(path) == {"a": 3, "b": 0.5, "c": [0, 1, 2], "d": True}
    assert os.listdir(tmp_path) == ["m.json"]


def test_read_json_error_names_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"--config: cannot read .*bad.json"):
        read_json(bad, what="--config")
    assert json.loads("{}") == {}


def test_write_records_json_and_csv(tmp_path):
    import csv

    from tfdnc.utils.records import write_records

    rows = [{"query": "q.jpg", "rank": 1, "id": "a"}, {"query": "q.jpg", "rank": 2, "id": "b"}]
    write_records(str(tmp_path / "out" / "hits.json"), rows, ["query", "rank", "id"])
    assert json.loads((tmp_path / "out" / "hits.json").read_text()) == rows
    write_records(str(tmp_path / "hits.csv"), rows, ["query", "rank", "id"])
    with open(tmp_path / "hits.csv") as f:
        assert list(csv.DictReader(f)) == [{k: str(v) for k, v in r.items()} for r in rows]


def test_lazy_attributes_import_on_use_and_name_the_package():
    from tfdnc.utils.lazy import lazy_attributes

    getattr_ = lazy_attributes("pkg", {"sqrt": "math"})
    assert getattr_("sqrt")(9.0) == 3.0
    with pytest.raises(AttributeError, match="'pkg' has no attribute 'nope'"):
        getattr_("nope")


def test_atomic_open_replaces_whole_or_leaves_the_old_file(tmp_path):
    from tfdnc.utils.atomic import atomic_open

    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as f:
            f.write("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]
    with atomic_open(path, "wb", fsync=False) as f:
        f.write(b"new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["f.txt"]
