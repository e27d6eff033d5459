"""Evaluation protocols: which sets are evaluated, with which Recall@K, and the answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tfdnc.datasets.base import DataSplits, ImageSet
from tfdnc.datasets.vehicleid import query_gallery_split
from tfdnc.evaluation.protocols import PROTOCOLS, evaluate_embedded, get_protocol, run_protocol


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def brute_recall(q, ql, g, gl, k, exclude_self):
    """Recall@k by sorting full similarity rows (the reference)."""
    sims = unit(q) @ unit(g).T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    hits = []
    for i in range(len(q)):
        relevant = (gl == ql[i]).sum() - (1 if exclude_self else 0)
        if relevant == 0:
            continue
        order = np.argsort(-sims[i], kind="stable")[:k]
        hits.append((gl[order] == ql[i]).any())
    return float(np.mean(hits))


def file_set(labels, prefix, name):
    return ImageSet(labels=np.asarray(labels), paths=[f"{prefix}/{i}.jpg" for i in range(len(labels))], name=name)


class LookupEmbedder:
    """embed(ImageSet) from a path -> vector table, counting what it embeds."""

    def __init__(self, table):
        self.table = table
        self.calls = []

    def __call__(self, image_set):
        self.calls.append(list(image_set.paths))
        return np.stack([self.table[p] for p in image_set.paths])


def test_protocol_recall_ks():
    assert get_protocol("cub").recall_ks == get_protocol("cars").recall_ks == (1, 2, 4, 8)
    assert get_protocol("default").recall_ks == (1, 2, 4, 8)
    assert get_protocol("sop").recall_ks == (1, 10, 100, 1000)
    assert get_protocol("inshop").recall_ks == (1, 10, 20, 30, 50)
    assert get_protocol("vehicleid").recall_ks == (1, 5)
    assert {p.name for p in PROTOCOLS.values() if p.query_gallery} == {"inshop", "vehicleid"}
    with pytest.raises(ValueError, match="unknown evaluation protocol 'msmt'"):
        get_protocol("msmt")


def test_known_answer_query_vs_gallery():
    # gallery: one item per class on the axes; both queries sit next to class 0
    g = np.array([[1.0, 0.0], [0.0, 1.0]])
    q = np.array([[0.9, 0.1], [0.9, 0.1]])
    result = evaluate_embedded("vehicleid", {"800": (q, np.array([0, 1]), g, np.array([0, 1]))})
    metrics = result.results["800"]
    assert metrics["recall@1"] == pytest.approx(0.5)  # the class-1 query misses at rank 1
    assert metrics["recall@5"] == pytest.approx(1.0)  # and finds it at rank 2
    assert metrics["map@r"] == pytest.approx(0.5)
    assert result.sizes["800"] == (2, 2)
    table = result.table()
    assert "R@1" in table and "R@5" in table and "50.00" in table and "100.00" in table


def test_protocol_reports_map_at_r_and_marp():
    # unit circle, classes 0, 0, 0, 1 at 0, 10, 90, 25 degrees; the class-0
    # queries' top R = 2: (hit, miss), (hit, miss), (miss, hit)
    angles = np.deg2rad([0, 10, 90, 25])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    result = evaluate_embedded("cub", {"test": (None, None, x, np.array([0, 0, 0, 1]))})
    metrics = result.results["test"]
    assert metrics["map@r"] == pytest.approx((0.5 + 0.5 + 0.25) / 3)  # / R
    assert metrics["marp"] == pytest.approx((1 + 1 + 0.5) / 3)  # / hits in the top R
    assert ("map@r", "MAP@R") in result.columns() and ("marp", "mARP") in result.columns()
    header = result.table().splitlines()[1].split()
    assert header[-2:] == ["MAP@R", "mARP"]
    assert result.table().splitlines()[-1].split()[-2:] == ["41.67", "83.33"]
    assert json.loads(json.dumps(result.to_dict()))["results"]["test"]["marp"] == pytest.approx(2.5 / 3)


@pytest.mark.parametrize("dataset", ["cub", "sop"])
def test_all_vs_all_matches_brute_force(dataset):
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 12, size=90)
    x = rng.normal(size=(90, 8)) + 1.5 * np.eye(12, 8)[labels]
    test = file_set(labels, "test", "test")
    train = file_set(labels[:4], "train", "train")
    embed = LookupEmbedder({p: v for p, v in zip(test.paths, x)})
    result = run_protocol(DataSplits(train=train, test=test, protocol=dataset), embed)
    assert list(result.results) == ["test"]
    assert embed.calls == [test.paths]  # the training images are not embedded
    metrics = result.results["test"]
    for k in PROTOCOLS[dataset].recall_ks:
        assert metrics[f"recall@{k}"] == pytest.approx(brute_recall(x, labels, x, labels, k, True))
    assert {"nmi", "f1", "map@r"} <= set(metrics)
    assert result.sizes["test"] == (90, 90)


def test_inshop_query_gallery():
    rng = np.random.default_rng(5)
    gl = np.repeat(np.arange(15), 2)
    ql = rng.integers(0, 15, size=40)
    g = rng.normal(size=(30, 6)) + 2 * np.eye(15, 6)[gl]
    q = rng.normal(size=(40, 6)) + 2 * np.eye(15, 6)[ql]
    query, gallery = file_set(ql, "q", "query"), file_set(gl, "g", "gallery")
    table = {**dict(zip(query.paths, q)), **dict(zip(gallery.paths, g))}
    splits = DataSplits(train=file_set([0, 0], "t", "train"), query=query, gallery=gallery, protocol="inshop")
    result = run_protocol(splits, LookupEmbedder(table))
    assert list(result.results) == ["query/gallery"]
    metrics = result.results["query/gallery"]
    for k in (1, 10, 20, 30, 50):
        assert metrics[f"recall@{k}"] == pytest.approx(brute_recall(q, ql, g, gl, k, False))
    assert result.sizes["query/gallery"] == (40, 30)
    json.dumps(result.to_dict())  # serialisable as written by `tfdnc evaluate`


def test_inshop_needs_query_and_gallery():
    splits = DataSplits(train=file_set([0, 0], "t", "train"), test=file_set([0, 0, 1, 1], "x", "test"),
                        protocol="inshop")
    with pytest.raises(ValueError, match="no query and gallery images"):
        run_protocol(splits, LookupEmbedder({}))


def test_vehicleid_each_test_size_and_shared_images_embedded_once():
    rng = np.random.default_rng(6)
    # nested test lists, as VehicleID's are: 800 within 1600 within 2400
    vehicles = np.repeat(np.arange(24), 3)
    paths = [f"image/{i:07d}.jpg" for i in range(len(vehicles))]
    vectors = rng.normal(size=(len(vehicles), 5)) + 1.2 * np.eye(24, 5)[vehicles]
    table = dict(zip(paths, vectors))
    extra = {}
    for size, n in (("800", 8), ("1600", 16), ("2400", 24)):
        keep = vehicles < n
        test = ImageSet(labels=vehicles[keep], paths=[p for p, k in zip(paths, keep) if k])
        extra[size] = query_gallery_split(test, seed=0, name=size)
    q, g = extra["2400"]
    splits = DataSplits(train=file_set([1, 1], "t", "train"), query=q, gallery=g,
                        protocol="vehicleid", extra_tests=extra)
    embed = LookupEmbedder(table)
    result = run_protocol(splits, embed)
    assert list(result.results) == ["800", "1600", "2400"]  # the main pair listed once
    assert len(embed.calls) == 1 and sorted(embed.calls[0]) == sorted(paths)
    for size, (query, gallery) in extra.items():
        qv = np.stack([table[p] for p in query.paths])
        gv = np.stack([table[p] for p in gallery.paths])
        for k in (1, 5):
            expected = brute_recall(qv, query.labels, gv, gallery.labels, k, False)
            assert result.results[size][f"recall@{k}"] == pytest.approx(expected)
        assert result.sizes[size] == (len(query), len(gallery))


def test_in_memory_sets_and_bad_embedder():
    rng = np.random.default_rng(7)
    images = rng.integers(0, 255, size=(20, 4, 4, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(5), 4)
    test = ImageSet(labels=labels, images=images)
    splits = DataSplits(train=test, test=test)

    def embed(image_set):  # flattened pixels: a deterministic embedding
        return image_set.images.reshape(len(image_set), -1).astype(np.float32) + 1.0

    x = embed(test)
    result = run_protocol(splits, embed)
    assert result.protocol.name == "default"
    assert result.results["test"]["recall@1"] == pytest.approx(brute_recall(x, labels, x, labels, 1, True))
    with pytest.raises(ValueError, match=r"must return \(20, d\) embeddings"):
        run_protocol(splits, lambda s: np.zeros((3, 2)))
