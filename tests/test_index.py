"""Gallery indexes, faiss and Milvus Lite: build, add, remove, search, save/load, calibrate.

Every search is checked against brute-force NumPy cosine search.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tfdnc.index import FaissIndex, IndexMismatchError, MilvusIndex, calibrate_threshold, open_index, save_index
from tfdnc.index.evaluate import recall_through_index

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
