"""Gallery indexes, faiss and Milvus Lite: build, add, remove, search, save/load, calibrate.

Every search is checked against brute-force NumPy cosine search.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import tfdnc
from tfdnc.index import FaissIndex, IndexMismatchError, MilvusIndex, calibrate_threshold, open_index, save_index
from tfdnc.index.recall import recall_through_index

from rankings import assert_top_k  # tests/rankings.py

DIM = 16


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n, dim=DIM, classes=5, seed=0, noise=0.3):
    """Unit vectors around `classes` fixed centres; `seed` draws the points only."""
    centres = np.random.default_rng(1234).standard_normal((classes, dim))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = centres[labels] + noise * rng.standard_normal((n, dim))
    return unit(x).astype(np.float32), [f"c{label}" for label in labels]


def exact_top(queries, gallery, k):
    sims = unit(queries) @ unit(gallery).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


# Backends under one interface; Milvus Lite runs in-process on a file.
def make_faiss(tmp_path, **kwargs):
    return FaissIndex(DIM, kwargs.pop("index_type", "flat"), **kwargs)


def make_milvus(tmp_path, **kwargs):
    return MilvusIndex(DIM, str(tmp_path / "work.db"), index_type=kwargs.pop("index_type", "flat"), **kwargs)


BACKENDS = {"faiss": make_faiss, "milvus": make_milvus}


@pytest.fixture(params=sorted(BACKENDS))
def make_index(request, tmp_path):
    return lambda **kwargs: BACKENDS[request.param](tmp_path, **kwargs)


def paths_of(n, start=0):
    return [f"g/{i}.png" for i in range(start, start + n)]


def test_search_before_any_add_answers_empty(make_index):
    index = make_index()
    hits = index.search(np.ones((3, DIM), np.float32), k=5)
    assert hits.ids.shape == (3, 0) and hits.similarities.shape == (3, 0)
    assert [r["id"] for r in hits.to_records()] == [None, None, None]


def test_build_and_search_match_brute_force(make_index):
    gallery, labels = clustered(60)
    queries, _ = clustered(7, seed=1)
    index = make_index()
    ids = index.add(gallery, paths_of(60), labels)
    assert list(ids) == list(range(60)) and len(index) == 60
    hits = index.search(queries, k=5)
    scores = unit(queries) @ unit(gallery).T
    assert hits.ids.shape == (7, 5)
    assert_top_k(hits.ids, scores)  # near-ties in either order (tests/rankings.py)
    np.testing.assert_allclose(hits.similarities, np.take_along_axis(scores, hits.ids, 1), atol=1e-5)
    assert hits.paths[0] == [f"g/{i}.png" for i in hits.ids[0]]
    assert hits.labels[0] == [labels[i] for i in hits.ids[0]]


def test_per_request_k_up_to_max_k(make_index):
    gallery, _ = clustered(30)
    index = make_index(max_k=8)
    index.add(gallery, paths_of(30))
    for k in (1, 3, 8):
        assert index.search(gallery[:2], k=k).ids.shape == (2, k)
    with pytest.raises(ValueError, match="k=9 exceeds this index's max_k=8"):
        index.search(gallery[:2], k=9)
    with pytest.raises(ValueError, match="positive integer"):
        index.search(gallery[:2], k=0)


def test_fewer_vectors_than_k_gives_fewer_columns(make_index):
    gallery, _ = clustered(3)
    index = make_index()
    index.add(gallery, paths_of(3))
    assert index.search(gallery, k=10).ids.shape == (3, 3)


def test_add_and_remove_without_rebuilding(make_index):
    gallery, labels = clustered(50)
    index = make_index()
    index.add(gallery[:30], paths_of(30), labels[:30])
    later = index.add(gallery[30:], paths_of(20, 30), labels[30:])
    assert list(later) == list(range(30, 50))
    removed = [0, 7, 33]
    assert index.remove(removed) == 3 and len(index) == 47
    keep = np.setdiff1d(np.arange(50), removed)
    hits = index.search(gallery, k=6)
    scores = unit(gallery) @ unit(gallery).T
    scores[:, removed] = -np.inf  # never returned
    assert hits.ids.shape == (50, 6)
    assert_top_k(hits.ids, scores)
    np.testing.assert_allclose(hits.similarities, np.take_along_axis(scores, hits.ids, 1), atol=1e-5)
    assert index.remove_paths(["g/1.png"]) == 1 and 1 not in index.search(gallery, k=10).ids
    with pytest.raises(KeyError, match=r"\[7\]"):
        index.remove([7])
    # ids are never reused
    assert list(index.add(gallery[:1], ["again.png"])) == [50]


def test_inputs_are_checked(make_index):
    index = make_index()
    with pytest.raises(ValueError, match=rf"must be \(N, {DIM}\), got shape \(2, 3\)"):
        index.add(np.ones((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="2 embeddings but 1 paths"):
        index.add(np.ones((2, DIM)), ["a"])
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, DIM), np.nan), k=1)


def test_save_and_reload_from_disk(make_index, tmp_path):
    gallery, labels = clustered(40)
    index = make_index(max_k=12)
    index.add(gallery, paths_of(40), labels)
    index.remove([3])
    first = save_index(index, tmp_path / "home")
    assert first == str(tmp_path / "home" / "1")
    reloaded = open_index(tmp_path / "home")
    assert type(reloaded) is type(index) and len(reloaded) == 39 and reloaded.max_k == 12
    np.testing.assert_array_equal(reloaded.search(gallery, k=12).ids, index.search(gallery, k=12).ids)
    assert reloaded.search(gallery[:1], k=1).labels == [[labels[0]]]
    # A change is saved as a new version; the first one is untouched.
    reloaded.add(gallery[:2], ["x.png", "y.png"])
    second = save_index(reloaded, tmp_path / "home")
    assert second.endswith(os.sep + "2")
    assert len(open_index(first)) == 39 and len(open_index(tmp_path / "home")) == 41
    with pytest.raises(FileExistsError, match="never overwritten"):
        save_index(reloaded, tmp_path / "home", version=1)


def test_saved_empty_index_reloads_and_answers_empty(make_index, tmp_path):
    path = save_index(make_index(), tmp_path / "home")
    assert open_index(path).search(np.ones((2, DIM)), k=3).ids.shape == (2, 0)


def test_calibrate_sets_a_threshold_stored_with_the_index(make_index, tmp_path):
    gallery, labels = clustered(80, classes=4, noise=0.6)
    validation, val_labels = clustered(60, classes=4, noise=0.6, seed=3)
    index = make_index()
    index.add(gallery, paths_of(80), labels)
    result = index.calibrate(validation, val_labels, target_precision=0.9)
    # The reference: nearest-hit similarity and correctness by brute force.
    order, sims = exact_top(validation, gallery, 1)
    correct = np.array([labels[i] == v for i, v in zip(order[:, 0], val_labels)])
    expected = calibrate_threshold(sims[:, 0], correct, 0.9)
    assert result["threshold"] == pytest.approx(expected["threshold"], abs=1e-5)
    above = sims[:, 0] >= result["threshold"] - 1e-6
    assert correct[above].mean() >= 0.9 and result["matched"] == above.sum()
    hits = index.search(validation, k=1)
    np.testing.assert_array_equal(hits.matched[:, 0], hits.similarities[:, 0] >= index.threshold)
    records = hits.to_records()
    no_match = [r for r in records if not r["match"]]
    assert len(no_match) == (~hits.matched[:, 0]).sum() and all(r["id"] is None for r in no_match)
    reloaded = open_index(save_index(index, tmp_path / "home"))
    assert reloaded.threshold == index.threshold and reloaded.calibration["target_precision"] == 0.9


def test_calibrate_skips_the_validation_image_itself(make_index):
    gallery, labels = clustered(40, classes=4, noise=0.6)
    index = make_index()
    index.add(gallery, paths_of(40), labels)
    with_self = index.calibrate(gallery, labels, 0.5)
    assert with_self["precision"] == 1.0 and with_self["matched"] == 40  # every query finds itself
    skipped = index.calibrate(gallery, labels, 0.5, paths=paths_of(40))
    order, sims = exact_top(gallery, gallery, 2)
    correct = np.array([labels[i] == labels[q] for q, i in enumerate(order[:, 1])])
    assert skipped["threshold"] == pytest.approx(calibrate_threshold(sims[:, 1], correct, 0.5)["threshold"],
                                                 abs=1e-5)


def test_calibrate_threshold_reference():
    out = calibrate_threshold([0.9, 0.8, 0.7, 0.6, 0.5], [True, True, False, True, False], 0.75)
    # precision at 0.9: 1, 0.8: 1, 0.7: 2/3, 0.6: 3/4, 0.5: 3/5 -> lowest reaching 0.75 is 0.6
    assert out["threshold"] == 0.6 and out["precision"] == 0.75 and out["matched"] == 4
    assert out["recall"] == 1.0
    with pytest.raises(ValueError, match="no threshold reaches precision 0.99"):
        calibrate_threshold([0.9, 0.8], [False, True], 0.99)


def test_recall_through_index_equals_exact_for_exact_index(make_index):
    gallery, labels = clustered(60, classes=6, noise=0.8)
    index = make_index()
    index.add(gallery, paths_of(60), labels)
    out = recall_through_index(index, gallery, labels, ks=(1, 2, 4), exclude_self=True)
    assert out["index"] == pytest.approx(out["exact"]) and out["num_queries"] == 60
    sims = gallery @ gallery.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(1)
    assert out["index"][1] == pytest.approx(np.mean([labels[i] == labels[q] for q, i in enumerate(nearest)]))


# --- faiss only ------------------------------------------------------------------


@pytest.mark.parametrize("index_type", ["ivf_flat", "ivf_pq", "hnsw"])
def test_approximate_faiss_types_find_most_neighbours_and_remove(index_type, tmp_path):
    gallery, labels = clustered(3000, classes=20)
    index = FaissIndex(DIM, index_type, nlist=16, nprobe=16, pq_m=8)
    index.add(gallery, paths_of(3000), labels)
    order, _ = exact_top(gallery[:50], gallery, 10)
    hits = index.search(gallery[:50], k=10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hits.ids, order)])
    assert recall >= (0.5 if index_type == "ivf_pq" else 0.95)
    index.remove(hits.ids[:, 0])
    after = index.search(gallery[:50], k=10).ids
    assert not set(hits.ids[:, 0]) & set(after.ravel())
    if index_type == "hnsw":
        assert index.info()["tombstones"] == len(set(hits.ids[:, 0]))
    reloaded = open_index(save_index(index, tmp_path / "home"))
    np.testing.assert_array_equal(reloaded.search(gallery[:50], k=10).ids, after)


def test_auto_type_is_exact_for_small_galleries():
    gallery, _ = clustered(100)
    index = FaissIndex(DIM)
    index.add(gallery, paths_of(100))
    assert index.info()["index_type"] == "flat"


# --- corrupted and mismatched saved indexes --------------------------------------


@pytest.fixture
def saved(tmp_path):
    gallery, labels = clustered(20)
    index = FaissIndex(DIM, "flat")
    index.add(gallery, paths_of(20), labels)
    return save_index(index, tmp_path / "home")


def test_corrupted_index_file_is_refused(saved):
    with open(os.path.join(saved, "index.faiss"), "r+b") as f:
        f.seek(100)
        f.write(b"\x00garbage")
    with pytest.raises(IndexMismatchError, match=r"index\.faiss' is corrupted"):
        open_index(saved)


def test_unreadable_faiss_file_is_refused_even_with_matching_checksum(saved):
    path = os.path.join(saved, "index.faiss")
    open(path, "wb").write(b"not a faiss index")
    meta_path = os.path.join(saved, "index.json")
    meta = json.load(open(meta_path))
    import hashlib

    meta["files"]["index.faiss"] = hashlib.sha256(b"not a faiss index").hexdigest()
    json.dump(meta, open(meta_path, "w"))
    with pytest.raises(IndexMismatchError, match="cannot read faiss index"):
        open_index(saved)


def test_wrong_dimension_is_refused(saved):
    with pytest.raises(IndexMismatchError, match="holds 16-dimensional embeddings, the model gives 8"):
        open_index(saved, dim=8)
    index = open_index(saved)
    with pytest.raises(ValueError, match=r"must be \(N, 16\), got shape \(1, 8\)"):
        index.search(np.ones((1, 8)), k=1)


def test_broken_metadata_is_refused(saved):
    open(os.path.join(saved, "index.json"), "w").write("{not json")
    with pytest.raises(IndexMismatchError, match="cannot read"):
        open_index(saved)


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved index"):
        open_index(tmp_path)


# --- writers take turns; a killed writer leaves nothing behind ----------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tfdnc.__file__)))  # the tfdnc under test

# A writer process: waits at a barrier (its `ready` file, then the `go` file), then adds
# its vectors to the newest version under the writers' lock.
WRITER = """
import os, sys, time
import numpy as np
from tfdnc.index import update_index
home, ready, go, first, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
vectors = np.random.default_rng(first).standard_normal((count, 16)).astype(np.float32)
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
with update_index(home) as index:
    index.add(vectors, [f"g/{i}.png" for i in range(first, first + count)])
print(index.saved_path)
"""


def _python(code, *args, env=None, **kwargs):
    env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _start_together(tmp_path, commands):
    """Starts one process per (code, args...) and releases them at once, when all are ready."""
    go = tmp_path / "go"
    procs = [_python(code, home, tmp_path / f"ready{i}", go, *rest)
             for i, (code, home, *rest) in enumerate(commands)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(len(procs))):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate() for p in procs if p.poll() is not None]
        time.sleep(0.01)
    go.touch()
    return [(p.wait(timeout=300), *p.communicate()) for p in procs]


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_concurrent_writers_lose_no_update(backend, tmp_path):
    """Two processes adding to one index at once: the newest version holds both additions."""
    gallery, labels = clustered(10)
    first = FaissIndex(DIM, "flat") if backend == "faiss" else MilvusIndex(DIM, index_type="flat")
    first.add(gallery, paths_of(10), labels)
    home = tmp_path / "home"
    save_index(first, home)
    first.discard()
    results = _start_together(tmp_path, [(WRITER, home, 100, 7), (WRITER, home, 200, 5)])
    assert [rc for rc, _, _ in results] == [0, 0], results
    assert sorted(os.path.basename(out.strip()) for _, out, _ in results) == ["2", "3"]
    newest = open_index(home)  # what search opens
    assert newest.saved_path == str(home / "3")
    assert sorted(newest.id_map.paths(newest.id_map.ids)) == sorted(paths_of(10) + paths_of(7, 100) + paths_of(5, 200))
    assert sorted(n for n in os.listdir(home) if n.startswith(".staging")) == []  # no working copy left


def test_a_waiting_writer_names_the_holder_and_a_dead_holder_blocks_nobody(saved, tmp_path):
    from tfdnc.index import IndexLockedError, update_index

    home = os.path.dirname(saved)
    holder = _python("import sys; from tfdnc.index.lock import index_lock\n"
                     f"with index_lock({home!r}):\n    print('held', flush=True); sys.stdin.readline()",
                     stdin=subprocess.PIPE)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(IndexLockedError, match=f"index .* is in use by process {holder.pid} .*waited 0.2 s"):
        with update_index(home, timeout=0.2) as index:
            index.remove([0])
    assert open_index(home).saved_path == saved  # nothing saved
    holder.kill()  # dies holding the lock: the kernel lets go of it
    holder.wait()
    with update_index(home, timeout=0) as index:
        index.remove([0])
    assert index.saved_path == os.path.join(home, "2") and len(open_index(home)) == 19


def test_a_writer_given_one_version_builds_on_that_version(saved):
    from tfdnc.index import update_index

    home = os.path.dirname(saved)
    with update_index(home) as index:
        index.remove([0, 1])
    with update_index(saved) as pinned:  # version 1 named: the change applies to it, not to version 2
        pinned.remove([5])
    assert pinned.saved_path == os.path.join(home, "3")
    assert len(open_index(home)) == 19 and len(open_index(os.path.join(home, "2"))) == 18


def test_an_exception_inside_update_index_saves_nothing(saved):
    from tfdnc.index import update_index

    with pytest.raises(KeyError, match="not in the index"):
        with update_index(saved) as index:
            index.remove([999])
    assert sorted(os.listdir(os.path.dirname(saved))) == [".lock", "1"]


# A build killed between adding and saving (SIGKILL: no cleanup runs).
KILLED_BUILD = """
import os, signal, sys
import numpy as np
from tfdnc.index import MilvusIndex
work_dir = sys.argv[1] or None
if len(sys.argv) > 2:  # a writer of a saved index: killed holding its lock
    from tfdnc.index import update_index
    with update_index(sys.argv[2]) as index:
        index.add(np.ones((3, 16), np.float32), ["x.png", "y.png", "z.png"])
        os.kill(os.getpid(), signal.SIGKILL)
index = MilvusIndex(16, index_type="flat", **({"work_dir": work_dir} if work_dir else {}))
index.add(np.ones((3, 16), np.float32), ["x.png", "y.png", "z.png"])
print(index.uri, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_milvus_build_leaves_nothing_the_next_one_does_not_remove(tmp_path, monkeypatch):
    temp = tmp_path / "temp"
    temp.mkdir()
    killed = _python(KILLED_BUILD, "", env={"TMPDIR": str(temp)})
    out, err = killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL, err
    assert os.path.dirname(os.path.dirname(out.strip())) == str(temp)
    (left,) = os.listdir(temp)
    assert left.startswith("tfdnc-milvus-")
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    gallery, labels = clustered(10)
    index = MilvusIndex(DIM, index_type="flat")  # the next build in the temp folder removes the dead one's
    index.add(gallery, paths_of(10), labels)
    save_index(index, tmp_path / "home")
    assert left not in os.listdir(temp)
    assert left.startswith(f"tfdnc-milvus-{killed.pid}@")  # named after its process
    assert [n.split("@")[0] for n in os.listdir(temp)] == [f"tfdnc-milvus-{os.getpid()}"]
    index.discard()
    assert os.listdir(temp) == []


def test_a_killed_index_writer_leaves_its_working_copy_only_until_the_next_writer(tmp_path, monkeypatch):
    from tfdnc.index import update_index

    temp, home = tmp_path / "temp", tmp_path / "home"
    temp.mkdir()
    gallery, labels = clustered(10)
    index = MilvusIndex(DIM, index_type="flat", work_dir=home)
    index.add(gallery, paths_of(10), labels)
    save_index(index, home)
    index.discard()
    for saved_version, args in enumerate(([home], [home, home]), start=2):
        # A build into the index folder, then an `add` to the saved index, each killed before saving.
        killed = _python(KILLED_BUILD, *args, env={"TMPDIR": str(temp)})
        _, err = killed.communicate(timeout=300)
        assert killed.returncode == -signal.SIGKILL, err
        left = [n for n in os.listdir(home) if n.startswith(".staging-")]
        assert len(left) == 1 and left[0].startswith(f".staging-{killed.pid}@")
        with update_index(home, timeout=0) as index:  # not blocked by the dead writer, and removes its copy
            index.add(gallery[:1], ["new.png"])
        index.discard()
        assert sorted(os.listdir(home)) == [".lock"] + [str(v) for v in range(1, saved_version + 1)]
    assert os.listdir(temp) == []  # nothing in the system temp folder
    assert len(open_index(home)) == 12


def test_an_id_map_saved_without_absolute_paths_resolves_them_from_the_working_directory(tmp_path, monkeypatch):
    from tfdnc.index.idmap import IdMap

    monkeypatch.chdir(tmp_path)
    ids = IdMap()
    ids.add(["g/cat/1.png", "g/dog/2.png"], ["cat", "dog"])
    ids.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as data:  # as an id map was written before absolute paths were kept
        np.savez(tmp_path / "old.npz", **{k: data[k] for k in data.files if k != "absolute_paths"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("new.npz", "old.npz"):
        monkeypatch.chdir(tmp_path)
        loaded = IdMap.load(tmp_path / name)
        assert list(loaded.ids_of_paths([str(tmp_path / "g/dog/2.png"), "./g/cat/1.png"])) == [1, 0]
        monkeypatch.chdir(elsewhere)  # only the new map knows where its relative paths were
        if name == "new.npz":
            assert list(loaded.ids_of_paths([str(tmp_path / "g/dog/2.png")])) == [1]
        else:
            with pytest.raises(KeyError, match="is not in the index"):
                loaded.ids_of_paths([str(tmp_path / "g/dog/2.png")])
