"""Retrieval / clustering metrics against brute-force references, and the callback."""

import csv
import itertools

import numpy as np
import pytest

from tfdnc.evaluation import (
    RetrievalEvaluation,
    compute_metrics as evaluate,
    map_at_r,
    marp,
    nearest_neighbors,
    nmi_and_f1,
    pairwise_f1,
    r_precision,
    recall_at_k,
    retrieval_metrics,
)
from tfdnc.evaluation import neighbors as neighbors_module

from rankings import assert_top_k  # tests/rankings.py


def exact_unit_vectors(rng, n, d=8, nonzero=4):
    """Unit vectors with entries in {0, +-1/2}: norms and dot products are
    exact in float32, so rankings are exact and full of ties."""
    x = np.zeros((n, d), dtype=np.float32)
    for i in range(n):
        cols = rng.choice(d, size=nonzero, replace=False)
        x[i, cols] = rng.choice([-0.5, 0.5], size=nonzero)
    return x


def reference_rankings(q, g, exclude_self, metric="cosine"):
    """Full ranking per query: similarity descending, lower index first on ties."""
    q64, g64 = q.astype(np.float64), g.astype(np.float64)
    if metric == "cosine":
        q64 /= np.linalg.norm(q64, axis=1, keepdims=True)
        g64 /= np.linalg.norm(g64, axis=1, keepdims=True)
        sims = q64 @ g64.T
    else:
        sims = -((q64[:, None, :] - g64[None, :, :]) ** 2).sum(-1)
    out = []
    for i in range(len(q)):
        order = sorted(range(len(g)), key=lambda j: (-sims[i, j], j))
        if exclude_self:
            order.remove(i)
        out.append(order)
    return out


def reference_metrics(q, ql, g, gl, ks, exclude_self, metric="cosine"):
    rankings = reference_rankings(q, g, exclude_self, metric)
    recalls = {k: [] for k in ks}
    aps, arps, rps = [], [], []
    for i, order in enumerate(rankings):
        rel = [gl[j] == ql[i] for j in order]
        r = sum(rel)
        if r == 0:
            continue
        for k in ks:
            recalls[k].append(any(rel[:k]))
        rps.append(sum(rel[:r]) / r)
        summed = sum(rel[j] * sum(rel[: j + 1]) / (j + 1) for j in range(r))
        aps.append(summed / r)
        arps.append(summed / sum(rel[:r]) if any(rel[:r]) else 0.0)
    out = {f"recall@{k}": float(np.mean(v)) for k, v in recalls.items()}
    out["map@r"] = float(np.mean(aps))
    out["marp"] = float(np.mean(arps))
    out["r_precision"] = float(np.mean(rps))
    out["num_queries"] = len(aps)
    return out


def assert_metrics_equal(got, want):
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


# --------------------------------------------------------------------------- neighbours


@pytest.mark.parametrize("chunk_size", [None, 1, 7])
def test_nearest_neighbors_match_reference_with_ties(chunk_size):
    rng = np.random.default_rng(0)
    x = exact_unit_vectors(rng, 40)
    x[5] = x[9]  # exact duplicates too
    idx, sims = nearest_neighbors(x, k=6, chunk_size=chunk_size)
    ref = reference_rankings(x, x, exclude_self=True)
    np.testing.assert_array_equal(idx, [r[:6] for r in ref])
    assert (np.diff(sims, axis=1) <= 0).all()
    g = exact_unit_vectors(rng, 30)
    idx, _ = nearest_neighbors(x, g, k=5, chunk_size=chunk_size)
    np.testing.assert_array_equal(idx, [r[:5] for r in reference_rankings(x, g, False)])


def test_self_excluded_even_when_tied_with_duplicates():
    # five identical rows: for rows 3 and 4 the top k + 1 holds lower-index
    # duplicates only, without the query itself
    x = np.array([[1, 0]] * 5 + [[0, 1], [0.6, 0.8]], dtype=np.float32)
    idx, _ = nearest_neighbors(x, k=2)
    for i in range(len(x)):
        assert i not in idx[i]
    np.testing.assert_array_equal(idx[4], [0, 1])
    np.testing.assert_array_equal(idx[0], [1, 2])
    np.testing.assert_array_equal(idx, [r[:2] for r in reference_rankings(x, x, True)])


# --------------------------------------------------------------------------- retrieval metrics


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_retrieval_metrics_match_brute_force(metric):
    rng = np.random.default_rng(1)
    for trial in range(3):
        if metric == "cosine":
            x = exact_unit_vectors(rng, 60)
        else:  # small integers: squared distances are exact
            x = rng.integers(-2, 3, size=(60, 5)).astype(np.float32)
        y = rng.integers(0, 6, size=60)
        y[0] = 99  # a singleton class: its query has nothing to retrieve
        ks = (1, 2, 4, 8, 100)
        got = retrieval_metrics(x, y, ks, metric=metric)
        want = reference_metrics(x, y, x, y, ks, exclude_self=True, metric=metric)
        assert_metrics_equal(got, want)
        assert got["num_queries"] == 59


def test_query_gallery_metrics_match_brute_force():
    rng = np.random.default_rng(2)
    g = exact_unit_vectors(rng, 50)
    gl = rng.integers(0, 8, size=50)
    q = exact_unit_vectors(rng, 20)
    ql = rng.integers(0, 9, size=20)  # class 8 is never in the gallery
    got = retrieval_metrics(g, gl, (1, 3, 10), query_embeddings=q, query_labels=ql)
    want = reference_metrics(q, ql, g, gl, (1, 3, 10), exclude_self=False)
    assert_metrics_equal(got, want)


def test_query_gallery_known_answer():
    e = np.eye(4, dtype=np.float32)
    gallery, gallery_labels = e, np.array([0, 1, 2, 3])
    queries = np.stack([e[0] + 0.1 * e[1],  # label 0: nearest e0 -> hit at 1
                        e[2] + 0.5 * e[1],  # label 1: e2 then e1 -> hit at 2
                        e[3] + 0.2 * e[1] + 0.1 * e[0]])  # label 2: e3, e1, e0, e2 -> hit at 4
    query_labels = np.array([0, 1, 2])
    rec = recall_at_k(gallery, gallery_labels, ks=(1, 2, 3, 4), query_embeddings=queries,
                      query_labels=query_labels)
    assert rec == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(2 / 3), 4: 1.0}
    # R = 1 for every query: AP@R = precision@1
    kw = dict(query_embeddings=queries, query_labels=query_labels)
    assert map_at_r(gallery, gallery_labels, **kw) == pytest.approx(1 / 3)
    assert r_precision(gallery, gallery_labels, **kw) == pytest.approx(1 / 3)


def test_map_at_r_hand_computed():
    # query 0 of class 0 (R = 2): ranking 1 (class 0), 3 (class 1), 2 (class 0)
    # -> AP@R = (1/1 + 0) / 2 = 0.5 ; R-precision = 1/2
    x = np.array([[1, 0], [0.99, 0.14], [0.6, 0.8], [0.9, 0.43]], dtype=np.float32)
    y = np.array([0, 0, 0, 1])
    q_res = retrieval_metrics(x[1:], y[1:], (1,), query_embeddings=x[:1], query_labels=y[:1])
    assert q_res["map@r"] == pytest.approx(0.5)
    assert q_res["r_precision"] == pytest.approx(0.5)


def brute_force_map_at_r_and_marp(q, ql, g, gl, exclude_self):
    """Both MAP@R variants from a full NumPy argsort of the distances.

    MAP@R (Musgrave et al.): sum_{i<=R} P@i rel(i) / R. mARP (the TPAMI D&C
    code, metriclearning/evaluation/mean_avg_precision.py:14): the same sum
    over the hits in the top R, 0 for a query without hits. Queries with
    R = 0 are left out of both.
    """
    d = ((q[:, None, :].astype(np.float64) - g[None, :, :]) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    # No two distances of a query within float32 round-off of each other, so
    # the float32 ranking matches this one on any CPU.
    assert np.diff(np.sort(d, axis=1)[:, :len(g) - exclude_self], axis=1).min() > 1e-5
    maps, marps, no_hit = [], [], 0
    for i in range(len(q)):
        r = int((gl == ql[i]).sum()) - (1 if exclude_self else 0)
        if r == 0:
            continue
        top = gl[np.argsort(d[i], kind="stable")[:r]] == ql[i]
        precision = np.cumsum(top) / np.arange(1, r + 1)
        summed = float((precision * top).sum())
        maps.append(summed / r)
        marps.append(summed / top.sum() if top.any() else 0.0)
        no_hit += int(not top.any())
    return float(np.mean(maps)), float(np.mean(marps)), no_hit


@pytest.mark.parametrize("query_gallery", [False, True])
def test_marp_divides_by_hits_map_at_r_by_r(query_gallery):
    # continuous data (no ties), euclidean = cosine order after normalising
    rng = np.random.default_rng(12)
    g = rng.normal(size=(40, 3))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    gl = rng.integers(0, 10, size=40)
    if query_gallery:
        q = rng.normal(size=(15, 3))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        ql = rng.integers(0, 10, size=15)
        kw = dict(query_embeddings=q, query_labels=ql)
    else:
        q, ql, kw = g, gl, {}
    want_map, want_marp, no_hit = brute_force_map_at_r_and_marp(q, ql, g, gl, not query_gallery)
    assert no_hit > 0  # queries with no hit in their top R: 0 in mARP's mean
    assert want_marp > want_map + 0.05  # a case where the two differ
    res = retrieval_metrics(g, gl, (1,), **kw)
    assert res["map@r"] == pytest.approx(want_map, abs=1e-12)
    assert res["marp"] == pytest.approx(want_marp, abs=1e-12)
    assert map_at_r(g, gl, **kw) == pytest.approx(want_map, abs=1e-12)
    assert marp(g, gl, **kw) == pytest.approx(want_marp, abs=1e-12)
    only = evaluate(g, gl, ks=(1,), metrics=("marp",), **kw)
    assert only == {"marp": pytest.approx(want_marp, abs=1e-12)}


def test_marp_hand_computed():
    # unit circle, classes 0, 0, 0, 1 at 0, 10, 90 and 25 degrees; R = 2 for class 0.
    # query 0: 10 (hit), 25 (miss) -> MAP@R 1/2, mARP 1/1
    # query 1: 0 (hit), 25 (miss) -> 1/2, 1
    # query 2: 25 (miss), 10 (hit) -> (1/2)/2, (1/2)/1
    # query 3 (class 1): R = 0, left out
    angles = np.deg2rad([0, 10, 90, 25])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    res = retrieval_metrics(x, [0, 0, 0, 1], (1,))
    assert res["num_queries"] == 3
    assert res["map@r"] == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    assert res["marp"] == pytest.approx((1 + 1 + 0.5) / 3)


def test_chunked_equals_unchunked():
    # Data whose every similarity is exact in float32, so that no CPU's
    # matmul (a chunk of 1 row takes another kernel than 300) can round two
    # close scores into another order: unit vectors of +-1/2 entries for
    # cosine, small integers for euclidean. Their many ties check that
    # every chunk breaks them alike (lower index first).
    rng = np.random.default_rng(3)
    for x, metric in [(exact_unit_vectors(rng, 300), "cosine"),
                      (rng.integers(-3, 4, size=(300, 6)).astype(np.float32), "euclidean")]:
        y = rng.integers(0, 7, size=300)
        full = retrieval_metrics(x, y, (1, 2, 4, 8), chunk_size=300, metric=metric)
        for chunk in (1, 13, 64, 299):
            assert retrieval_metrics(x, y, (1, 2, 4, 8), chunk_size=chunk, metric=metric) == full
        assert retrieval_metrics(x, y, (1, 2, 4, 8), metric=metric) == full
        want = reference_metrics(x, y, x, y, (1, 2, 4, 8), exclude_self=True, metric=metric)
        assert_metrics_equal(full, want)


def test_memory_light_path_never_builds_more_than_a_chunk(monkeypatch):
    import tensorflow as tf

    rows = []
    real_matmul = tf.matmul

    def spy(a, b, **kw):
        rows.append(int(a.shape[0]))
        return real_matmul(a, b, **kw)

    monkeypatch.setattr(tf, "matmul", spy)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 6)).astype(np.float32)
    y = rng.integers(0, 4, size=100)
    retrieval_metrics(x, y, chunk_size=16)
    assert max(rows) == 16 and sum(rows) == 100
    # the default chunk of a 60,000-item gallery keeps one block under 64 MB
    n = 60_000
    assert neighbors_module.default_chunk_size(n) * n * 4 <= 64 * 2**20


def test_recall_at_k_public_api_and_errors():
    rng = np.random.default_rng(5)
    x = exact_unit_vectors(rng, 30)
    y = rng.integers(0, 3, size=30)
    rec = recall_at_k(x, y, ks=(1, 4))
    ref = reference_metrics(x, y, x, y, (1, 4), exclude_self=True)
    assert rec == {1: ref["recall@1"], 4: ref["recall@4"]}
    with pytest.raises(ValueError, match="`labels` must have shape \\(30,\\)"):
        recall_at_k(x, y[:-1])
    with pytest.raises(ValueError, match="`embeddings` must be a 2-D"):
        recall_at_k(x[0], y[:1])
    with pytest.raises(ValueError, match="`query_embeddings` has dimension 3"):
        recall_at_k(x, y, query_embeddings=x[:, :3], query_labels=y)
    with pytest.raises(ValueError, match="pass both"):
        recall_at_k(x, y, query_embeddings=x)
    with pytest.raises(ValueError, match="`ks`"):
        recall_at_k(x, y, ks=(0,))
    bad = x.copy()
    bad[2, 2] = np.nan
    with pytest.raises(ValueError, match="`embeddings` contains NaN"):
        recall_at_k(bad, y)


# --------------------------------------------------------------------------- clustering metrics


def test_pairwise_f1_matches_all_pairs():
    rng = np.random.default_rng(6)
    for _ in range(5):
        y = rng.integers(0, 5, size=40)
        c = rng.integers(0, 4, size=40) * 3 + 1  # arbitrary cluster ids
        tp = fp = fn = 0
        for i, j in itertools.combinations(range(40), 2):
            same_c, same_y = c[i] == c[j], y[i] == y[j]
            tp += same_c and same_y
            fp += same_c and not same_y
            fn += same_y and not same_c
        p, r = tp / (tp + fp), tp / (tp + fn)
        assert pairwise_f1(y, c) == pytest.approx(2 * p * r / (p + r))
    assert pairwise_f1(np.arange(5), np.zeros(5, dtype=int)) == 0.0


def test_nmi_and_f1():
    from sklearn.metrics import normalized_mutual_info_score

    from tfdnc.clustering import kmeans

    rng = np.random.default_rng(7)
    y = np.repeat(np.arange(4), 25)
    x = np.eye(6, dtype=np.float32)[y] * 5 + 0.3 * rng.normal(size=(100, 6)).astype(np.float32)
    nmi, f1 = nmi_and_f1(x, y, seed=3)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    clusters, _ = kmeans(xn, 4, seed=3)
    assert nmi == pytest.approx(normalized_mutual_info_score(y, clusters))
    assert f1 == pytest.approx(pairwise_f1(y, clusters))
    # a perfect clustering scores 1
    assert pairwise_f1(y, y + 10) == 1.0
    assert 0.0 <= nmi <= 1.0


def test_evaluate_keys_and_consistency():
    rng = np.random.default_rng(8)
    x = exact_unit_vectors(rng, 50)
    y = rng.integers(0, 5, size=50)
    res = evaluate(x, y, ks=(1, 10))
    assert set(res) == {"recall@1", "recall@10", "map@r", "marp", "r_precision", "nmi", "f1"}
    ref = reference_metrics(x, y, x, y, (1, 10), exclude_self=True)
    for key in ("recall@1", "recall@10", "map@r", "marp", "r_precision"):
        assert res[key] == pytest.approx(ref[key])
    assert set(evaluate(x, y, metrics=("nmi",))) == {"nmi"}
    with pytest.raises(ValueError, match="`metrics`"):
        evaluate(x, y, metrics=("accuracy",))


# --------------------------------------------------------------------------- callback


def tiny_model(dim_in, dim_out=4):
    import keras

    from tfdnc.layers.normalization import L2Normalize

    inputs = keras.Input((dim_in,))
    outputs = L2Normalize()(keras.layers.Dense(dim_out)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_callback_writes_logs_seen_by_history_and_csv(tmp_path):
    import keras

    rng = np.random.default_rng(9)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = rng.integers(0, 4, size=40)
    model = tiny_model(5)
    cb = RetrievalEvaluation(x, y, every=3, ks=(1, 2), batch_size=16)
    log = tmp_path / "log.csv"
    stop = keras.callbacks.EarlyStopping("val_recall@1", mode="max", patience=100)
    history = model.fit(x, np.zeros((40, 4), np.float32), epochs=4, batch_size=8, verbose=0,
                        callbacks=[cb, keras.callbacks.CSVLogger(str(log)), stop])
    # epochs 1 (first), 3 (every 3rd), 4 (last): three evaluations
    assert len(history.history["val_recall@1"]) == 3
    final = evaluate(model.predict(x, verbose=0), y, ks=(1, 2))
    for key, value in final.items():
        assert history.history["val_" + key][-1] == pytest.approx(value)
    with open(log) as f:
        rows = list(csv.DictReader(f))
    assert [r["val_recall@1"] != "NA" for r in rows] == [True, False, True, True]
    assert float(rows[-1]["val_map@r"]) == pytest.approx(final["map@r"])


def test_callback_on_dataset_and_query_gallery():
    import tensorflow as tf

    rng = np.random.default_rng(10)
    g = rng.normal(size=(30, 5)).astype(np.float32)
    gl = rng.integers(0, 3, size=30)
    q = rng.normal(size=(10, 5)).astype(np.float32)
    ql = rng.integers(0, 3, size=10)
    model = tiny_model(5)
    cb = RetrievalEvaluation(
        tf.data.Dataset.from_tensor_slices((g, gl)).batch(7),
        query_data=tf.data.Dataset.from_tensor_slices(({"images": q}, ql)).batch(4),
        ks=(1, 5),
        metrics=("recall", "map@r"),
    )
    res = cb.evaluate_model(model)
    want = evaluate(model.predict(g, verbose=0), gl, ks=(1, 5), metrics=("recall", "map@r"),
                    query_embeddings=model.predict(q, verbose=0), query_labels=ql)
    assert res == pytest.approx(want)
    with pytest.raises(ValueError, match="`labels` is required"):
        RetrievalEvaluation(g)
    with pytest.raises(ValueError, match="`labels` has 29 entries"):
        RetrievalEvaluation(g, gl[:-1])
    with pytest.raises(ValueError, match="`every`"):
        RetrievalEvaluation(g, gl, every=0)


def test_evaluation_due_every_n_epochs_the_last_and_optionally_the_first():
    from tfdnc.evaluation import evaluation_due

    assert [e for e in range(7) if evaluation_due(e, 3, 7)] == [0, 2, 5, 6]
    assert [e for e in range(7) if evaluation_due(e, 3, 7, first=False)] == [2, 5, 6]
    assert [e for e in range(4) if evaluation_due(e, 3)] == [0, 2]  # length unknown: no "last"


def test_nearest_neighbors_with_excluded_items_and_inner_product():
    rng = np.random.default_rng(11)
    gallery = rng.normal(size=(30, 6))
    picks = np.array([2, 9, 21, 29])
    idx, sims = nearest_neighbors(gallery[picks], gallery, 5, exclude=picks, metric="inner_product")
    for row, s, i in zip(idx, sims, picks):
        brute = gallery @ gallery[i]
        brute[i] = -np.inf
        assert_top_k(row[None], brute[None])  # near-ties in either order (tests/rankings.py)
        np.testing.assert_allclose(s, np.sort(brute)[::-1][:5], rtol=1e-5)
    with pytest.raises(ValueError, match="`exclude` has 3 entries"):
        nearest_neighbors(gallery[picks], gallery, 1, exclude=picks[:3])
