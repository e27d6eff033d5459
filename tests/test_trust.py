"""Files a user hands over never run code: a run directory's backup is read as plain arrays.

Run directories are copied between machines and shared. Resuming one read
NumPy's random state with `pickle.loads` (issue 19: a planted random.npz ran
a command on `train.py --resume`). Now every .npz is read with
`allow_pickle=False`, and a file that would need a pickle is refused by name
before anything in the run directory changes.
"""

import hashlib
import os
import pickle
import random
import subprocess
import sys

import keras
import numpy as np
import pytest

from tfdnc.training.generations import GenerationStore
from tfdnc.training.random_state import restore_random_state, save_random_state
from tfdnc.utils.npz import UnsafeFileError, read_npz

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--dataset", "digits", "--image-size", "16", "--embedding-dim", "8", "--classes-per-batch", "4",
        "--images-per-class", "4", "--kmeans-iters", "5", "--eval-every", "100", "--verbose", "2",
        "--epochs", "1", "--recluster-every", "1", "--steps-per-epoch", "2", "--k-final", "2", "--no-export"]


class WritesMarker:
    """A pickle payload: unpickling it creates the file `path` (what `os.system` would do, without a shell)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _train(run_dir, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    argv = [sys.executable, os.path.join(ROOT, "train.py"), *TINY, "--run-dir", str(run_dir), *extra]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _snapshot(run_dir):
    """Every file of the run directory (but the lock, rewritten by whoever holds it) and its content."""
    out = {}
    for folder, _, names in os.walk(run_dir):
        for name in names:
            path = os.path.join(folder, name)
            if name != ".lock":
                with open(path, "rb") as f:
                    out[os.path.relpath(path, run_dir)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trust") / "run"
    result = _train(run_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def _planted_copy(trained, tmp_path, entries):
    """A copy of the trained run whose newest backup's random.npz holds `entries`."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    latest = GenerationStore(run_dir / "backup").latest()
    assert latest is not None and latest.epoch == 1
    with open(latest.random, "wb") as f:
        np.savez(f, **entries)
    return run_dir, latest.random


def test_a_backup_in_the_old_pickled_format_is_refused_unread(trained, tmp_path):
    """The issue's attack: the old format's "numpy" entry, the bytes of a pickle with a `__reduce__`."""
    marker = tmp_path / "marker"
    payload = np.frombuffer(pickle.dumps(WritesMarker(marker)), np.uint8)
    run_dir, planted = _planted_copy(trained, tmp_path, {"numpy": payload})
    before = _snapshot(run_dir)
    result = _train(run_dir, "--resume")
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert not marker.exists()  # the pickle never ran
    errors = [line for line in result.stderr.splitlines() if line.startswith("train.py")]  # not TF's log
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert errors[0].startswith("train.py: error: random state ") and repr(planted) in errors[0]
    assert "pickle" in errors[0] and "new --run-dir" in errors[0]
    assert _snapshot(run_dir) == before  # nothing written, nothing pruned


def test_a_pickled_entry_in_the_current_format_is_refused_unread(trained, tmp_path):
    """An object array (NumPy pickles those) where a plain array belongs."""
    marker = tmp_path / "marker"
    good = read_npz(GenerationStore(trained / "backup").latest().random)
    good["numpy:keys"] = np.array([WritesMarker(marker)], dtype=object)
    run_dir, planted = _planted_copy(trained, tmp_path, good)
    before = _snapshot(run_dir)
    result = _train(run_dir, "--resume")
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert not marker.exists()
    assert "Traceback" not in result.stderr
    assert "entry 'numpy:keys'" in result.stderr and repr(planted) in result.stderr
    assert _snapshot(run_dir) == before


def test_random_state_is_plain_arrays_and_round_trips(tmp_path):
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.5)])
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's legacy generator
    random.gauss(0, 1)  # and in Python's
    path = tmp_path / "random.npz"
    save_random_state(str(path), model)
    expected = (np.random.standard_normal(3), [random.gauss(0, 1) for _ in range(3)], random.random())
    with np.load(path, allow_pickle=False) as data:  # every entry loads without a pickle
        kinds = {key: data[key].dtype.kind for key in data.files}
    assert "O" not in kinds.values() and kinds["numpy:keys"] == "u" and kinds["numpy:name"] == "U"
    keras.utils.set_random_seed(6)
    restore_random_state(str(path), model)
    got = (np.random.standard_normal(3), [random.gauss(0, 1) for _ in range(3)], random.random())
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1:] == expected[1:]


def test_a_malformed_random_state_names_the_file(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.5)])
    path = tmp_path / "random.npz"
    save_random_state(str(path), model)
    arrays = read_npz(path)
    arrays["numpy:keys"] = arrays["numpy:keys"][:10]
    np.savez(path, **arrays)
    state = np.random.get_state()
    with pytest.raises(ValueError, match=f"random state {str(path)!r} is malformed"):
        restore_random_state(str(path), model)
    assert np.array_equal(np.random.get_state()[1], state[1])  # nothing half-restored


def test_read_npz_refuses_pickles_by_name(tmp_path):
    marker = tmp_path / "marker"
    entry = tmp_path / "entry.npz"
    np.savez(entry, fine=np.arange(3), bad=np.array([WritesMarker(marker)], dtype=object))
    with pytest.raises(UnsafeFileError, match=rf"gallery: entry 'bad' of {str(entry)!r} holds a pickled"):
        read_npz(entry, what="gallery")
    whole = tmp_path / "whole.npz"
    whole.write_bytes(pickle.dumps(WritesMarker(marker)))
    with pytest.raises(UnsafeFileError, match=rf"{str(whole)!r} is a pickle, not an .npz"):
        read_npz(whole)
    assert not marker.exists()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(entry.read_bytes()[:40])
    with pytest.raises(ValueError, match="is not a readable .npz"):
        read_npz(cut)
    other = tmp_path / "other.npz"
    other.write_bytes(b"not an npz")  # neither zip nor pickle: damaged, not unsafe
    with pytest.raises(ValueError, match="is not an .npz archive") as error:
        read_npz(other)
    assert not isinstance(error.value, UnsafeFileError)
