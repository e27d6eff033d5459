"""Clustering: k-means, the TPAMI constraint, Hungarian identity, 2-means growth."""

import itertools
import warnings

import numpy as np
import pytest

from tfdnc.clustering import (
    ClusteringError,
    cluster_balanced,
    cluster_stats,
    kmeans,
    match_clusters,
    matching_cost,
    max_feasible_k,
    split_clusters,
    usable_mask,
)

BACKENDS = ["faiss", "sklearn"]


def usable_counts_reference(assignments, labels, k, min_images=2):
    """Per cluster, the number of classes with >= min_images images, by Python loops."""
    out = []
    for c in range(k):
        members = [int(y) for a, y in zip(assignments, labels) if a == c]
        out.append(sum(1 for y in set(members) if members.count(y) >= min_images))
    return np.array(out)


# --------------------------------------------------------------------------- kmeans


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_shapes_and_determinism(backend):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    a, c = kmeans(x, 5, seed=3, backend=backend, niter=20)
    assert a.dtype == np.int64 and a.shape == (300,)
    assert c.dtype == np.float32 and c.shape == (5, 6)
    assert a.min() >= 0 and a.max() < 5
    a2, c2 = kmeans(x, 5, seed=3, backend=backend, niter=20)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(c, c2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_every_point_used_no_subsampling(backend):
    # N > 256 * k: faiss's default would train on 256 * k points only; then
    # the centroids would be means of a subsample, not of their clusters.
    rng = np.random.default_rng(1)
    k, per = 4, 400
    centers = rng.normal(size=(k, 8)) * 10
    x = np.repeat(centers, per, axis=0) + rng.normal(size=(k * per, 8))
    assert len(x) > 256 * k
    a, c = kmeans(x, k, seed=0, backend=backend)
    # every point is at its nearest returned centroid
    d = ((x[:, None, :] - c[None].astype(np.float64)) ** 2).sum(-1)
    nearest = d.argmin(1)
    ties = np.isclose(d[np.arange(len(x)), a], d.min(1), rtol=1e-5)
    assert ((a == nearest) | ties).all()
    # converged on all points: each centroid is the mean of all its members
    for j in range(k):
        np.testing.assert_allclose(c[j], x[a == j].mean(0), atol=1e-3)


def test_faiss_default_would_subsample():
    """Guard for the test above: faiss's defaults do subsample at this size."""
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    k, per = 4, 400
    centers = rng.normal(size=(k, 8)) * 10
    x = (np.repeat(centers, per, axis=0) + rng.normal(size=(k * per, 8))).astype(np.float32)
    km = faiss.Kmeans(8, k, niter=100, seed=0, verbose=False)
    km.train(x)
    _, a = km.index.search(x, 1)
    errs = [np.abs(km.centroids[j] - x[a[:, 0] == j].mean(0)).max() for j in range(k)]
    assert max(errs) > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_spherical(backend):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 5)) * rng.uniform(0.1, 10, size=(200, 1))
    a, c = kmeans(x, 3, spherical=True, backend=backend, seed=1)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-5)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn @ c.T
    ok = np.isclose(sims[np.arange(200), a], sims.max(1), atol=1e-5)
    assert ok.all()


def test_kmeans_recovers_separated_blobs():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(3, 4)) * 20
    truth = np.repeat(np.arange(3), 50)
    x = centers[truth] + rng.normal(size=(150, 4))
    a, _ = kmeans(x, 3, backend="sklearn")
    # a permutation of the truth
    assert len({(t, p) for t, p in zip(truth, a)}) == 3


def test_kmeans_falls_back_to_sklearn_without_faiss(monkeypatch):
    import tfdnc.clustering.backends as clustering

    rng = np.random.default_rng(16)
    x = rng.normal(size=(120, 4))
    monkeypatch.setattr(clustering, "_faiss", lambda: None)
    monkeypatch.setattr(clustering, "_fallback_warned", False)
    with pytest.warns(RuntimeWarning, match="falls back to scikit-learn"):
        a, c = clustering.kmeans(x, 3, seed=2)
    a_ref, c_ref = clustering.kmeans(x, 3, seed=2, backend="sklearn")
    np.testing.assert_array_equal(a, a_ref)
    np.testing.assert_array_equal(c, c_ref)
    with pytest.raises(ValueError, match="faiss is not installed"):
        clustering.kmeans(x, 3, backend="faiss")


def test_missing_faiss_is_announced_once_per_process(monkeypatch):
    import sys

    import tfdnc.clustering.backends as clustering

    rng = np.random.default_rng(17)
    x = rng.normal(size=(90, 4))
    # `import faiss` raises ImportError while sys.modules maps it to None
    monkeypatch.setitem(sys.modules, "faiss", None)
    monkeypatch.setattr(clustering, "_fallback_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the once is tfdnc's, not the warnings registry's
        a, c = clustering.kmeans(x, 3, seed=1)
        a2, _ = clustering.kmeans(x, 3, seed=1)
        clustering.kmeans(x, 2, seed=4, backend="sklearn")  # asked for: nothing to say
    messages = [str(w.message) for w in caught if "faiss" in str(w.message)]
    assert len(messages) == 1, messages
    assert caught[0].category is RuntimeWarning
    assert "pip install faiss-cpu" in messages[0] and "slower" in messages[0]
    assert "scikit-learn" in messages[0] and "[tfdnc]" in messages[0]
    assert caught[0].filename == __file__  # points at the caller of kmeans
    a_ref, c_ref = clustering.kmeans(x, 3, seed=1, backend="sklearn")
    np.testing.assert_array_equal(a, a_ref)
    np.testing.assert_array_equal(a2, a_ref)
    np.testing.assert_array_equal(c, c_ref)
    with pytest.raises(ValueError, match="pip install faiss-cpu"):
        clustering.kmeans(x, 3, backend="faiss")


def test_kmeans_errors_name_the_argument():
    x = np.zeros((10, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="`k`.*cannot exceed"):
        kmeans(x, 11)
    with pytest.raises(ValueError, match="`k` must be >= 1"):
        kmeans(x, 0)
    with pytest.raises(ValueError, match="`features` must be a 2-D"):
        kmeans(np.zeros(10), 2)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="`features` contains NaN"):
        kmeans(bad, 2)
    with pytest.raises(ValueError, match="`backend`"):
        kmeans(x, 2, backend="cuda")


# --------------------------------------------------------------------------- constraint


def test_usable_mask_matches_reference():
    rng = np.random.default_rng(4)
    for _ in range(5):
        a = rng.integers(0, 4, size=60)
        y = rng.integers(0, 15, size=60) * 7 - 3  # arbitrary, negative ids too
        keep = usable_mask(a, y)
        ref = np.array([sum((a == ai) & (y == yi)) >= 2 for ai, yi in zip(a, y)])
        np.testing.assert_array_equal(keep, ref)
        ref3 = np.array([sum((a == ai) & (y == yi)) >= 3 for ai, yi in zip(a, y)])
        np.testing.assert_array_equal(usable_mask(a, y, min_images=3), ref3)


def test_cluster_stats_matches_reference():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 5, size=80)
    y = rng.integers(0, 12, size=80)
    stats = cluster_stats(a, y, 5)
    np.testing.assert_array_equal(stats.sizes, np.bincount(a, minlength=5))
    np.testing.assert_array_equal(stats.classes, [len(set(y[a == c])) for c in range(5)])
    np.testing.assert_array_equal(stats.usable_classes, usable_counts_reference(a, y, 5))


def test_cluster_balanced_satisfies_constraint():
    # 8 tight blobs of one class each, K=4: a cluster holding a single blob
    # violates the constraint; the retries must find a 2-blobs-per-cluster try.
    rng = np.random.default_rng(6)
    centers = rng.normal(size=(8, 6)) * 10
    y = np.repeat(np.arange(8), 20)
    x = centers[y] + 0.1 * rng.normal(size=(160, 6))
    a = cluster_balanced(x, y, 4, seed=0, on_failure="raise")
    assert (usable_counts_reference(a, y, 4) >= 2).all()
    np.testing.assert_array_equal(a, cluster_balanced(x, y, 4, seed=0, on_failure="raise"))


def failing_layout(rng):
    """K=4 blobs; blob 0 holds classes 0-4, blobs 1-3 a single class each."""
    blob_of_class = np.array([0, 0, 0, 0, 0, 1, 2, 3])
    centers = rng.normal(size=(4, 6)) * 50
    y = np.repeat(np.arange(8), 10)
    x = centers[blob_of_class[y]] + 0.1 * rng.normal(size=(80, 6))
    return x, y


def test_cluster_balanced_failure_modes():
    rng = np.random.default_rng(7)
    x, y = failing_layout(rng)
    with pytest.raises(ClusteringError, match="none of 3 k-means tries.*best try: 0:"):
        cluster_balanced(x, y, 4, max_retries=3, on_failure="raise")
    with pytest.warns(RuntimeWarning, match="returning it as is"):
        best = cluster_balanced(x, y, 4, max_retries=3, on_failure="best")
    assert (usable_counts_reference(best, y, 4) < 2).any()
    with pytest.warns(RuntimeWarning, match="repaired it by moving"):
        fixed = cluster_balanced(x, y, 4, max_retries=3)
    assert (usable_counts_reference(fixed, y, 4) >= 2).all()
    # the repair starts from the same best try and moves whole classes only
    moved = set(y[fixed != best])
    assert moved
    assert all(len(set(fixed[y == c])) == 1 for c in moved)
    assert (fixed[~np.isin(y, list(moved))] == best[~np.isin(y, list(moved))]).all()


def test_repair_on_random_partitions():
    # random labels spread over clusters, many fragments: the repair must
    # still reach the constraint whenever K is feasible.
    rng = np.random.default_rng(8)
    for trial in range(5):
        y = rng.integers(0, 12, size=70)
        k = max_feasible_k(y)
        x = rng.normal(size=(70, 3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            a = cluster_balanced(x, y, k, max_retries=1, seed=trial)
        assert (usable_counts_reference(a, y, k) >= 2).all()


def test_impossible_k_raises_clear_message():
    y = np.array([0, 0, 1, 1, 2, 2, 3, 4, 5])  # 3 classes with >= 2 images
    x = np.random.default_rng(0).normal(size=(9, 2))
    with pytest.raises(ClusteringError, match=r"K=2 is impossible.*only 3 of 6 classes.*K <= 1"):
        cluster_balanced(x, y, 2)
    assert issubclass(ClusteringError, ValueError)
    assert max_feasible_k(y) == 1
    with pytest.raises(ValueError, match="`labels` must have shape"):
        cluster_balanced(x, y[:-1], 1)


# --------------------------------------------------------------------------- matching


def test_matching_cost_equals_set_symmetric_differences():
    rng = np.random.default_rng(9)
    for k_new, k_old in [(3, 3), (4, 2), (5, 5)]:
        new = rng.integers(0, k_new, size=50)
        old = rng.integers(0, k_old, size=50)
        cost = matching_cost(new, old, k_new, k_old)
        for i in range(k_new):
            for j in range(k_old):
                a = set(np.flatnonzero(new == i))
                b = set(np.flatnonzero(old == j))
                assert cost[i, j] == len(a ^ b)


def test_match_clusters_recovers_permutation():
    rng = np.random.default_rng(10)
    old = rng.integers(0, 6, size=200)
    perm = rng.permutation(6)
    new = perm[old]  # same clusters, shuffled ids
    mapping = match_clusters(new, old, 6, 6)
    np.testing.assert_array_equal(mapping[new], old)
    # identity stays identity
    np.testing.assert_array_equal(match_clusters(old, old, 6, 6), np.arange(6))


def test_match_clusters_is_optimal():
    rng = np.random.default_rng(11)
    for _ in range(5):
        old = rng.integers(0, 4, size=40)
        new = np.where(rng.random(40) < 0.3, rng.integers(0, 4, size=40), rng.permutation(4)[old])
        mapping = match_clusters(new, old, 4, 4)
        cost = matching_cost(new, old, 4, 4)
        best = min(sum(cost[i, p[i]] for i in range(4)) for p in itertools.permutations(range(4)))
        assert sum(cost[i, mapping[i]] for i in range(4)) == best
        assert sorted(mapping) == list(range(4))


def test_match_clusters_more_new_clusters():
    rng = np.random.default_rng(12)
    old = rng.integers(0, 3, size=30)
    new = rng.integers(0, 5, size=30)
    mapping = match_clusters(new, old, 5, 3)
    assert sorted(mapping) == list(range(5))
    with pytest.raises(ValueError, match="`k_new` \\(2\\) < `k_old` \\(3\\)"):
        match_clusters(rng.integers(0, 2, size=30), old, 2, 3)
    with pytest.raises(ValueError, match="`old_assignments` must have shape"):
        match_clusters(new, old[:-1], 5, 3)


# --------------------------------------------------------------------------- splitting


def test_split_children_are_subsets_and_valid():
    rng = np.random.default_rng(13)
    centers = rng.normal(size=(16, 6)) * 10
    y = np.repeat(np.arange(32), 8)
    x = centers[y % 16] + rng.normal(size=(256, 6))
    parent = cluster_balanced(x, y, 2, seed=0, on_failure="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        children = split_clusters(x, y, parent, 2, seed=1)
    np.testing.assert_array_equal(children // 2, parent)
    assert set(children) == {0, 1, 2, 3}
    assert (usable_counts_reference(children, y, 4) >= 2).all()
    again = split_clusters(x, y, parent, 2, seed=1)
    np.testing.assert_array_equal(children, again)


def test_split_falls_back_to_class_level_split():
    # one cluster, 4 classes: class 0 far away, classes 1-3 together. Every
    # 2-means gives {0} vs {1,2,3}: child 0 has one class. The class-level
    # split must give both children 2 classes, without leaving the parent.
    rng = np.random.default_rng(14)
    y = np.repeat(np.arange(4), 10)
    x = np.where((y == 0)[:, None], 100.0, 0.0) + rng.normal(size=(40, 3))
    parent = np.zeros(40, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        children = split_clusters(x, y, parent, 1, max_retries=3)
    assert (usable_counts_reference(children, y, 2) >= 2).all()
    assert all(len(set(children[y == c])) == 1 for c in range(4))  # whole classes


def test_split_cluster_short_of_classes_is_repaired():
    # cluster 0 has 2 classes of 3 images (no split gives both children 2
    # usable classes), cluster 1 has 6: the repair moves classes across.
    rng = np.random.default_rng(15)
    y = np.repeat(np.arange(8), [3, 3, 6, 6, 6, 6, 6, 6])
    parent = (y >= 2).astype(np.int64)
    x = rng.normal(size=(len(y), 4)) + parent[:, None] * 20
    with pytest.warns(RuntimeWarning, match=r"clusters \[0\]"):
        children = split_clusters(x, y, parent, 2, max_retries=2)
    assert (usable_counts_reference(children, y, 4) >= 2).all()


def test_split_impossible_raises():
    y = np.repeat(np.arange(6), 3)
    x = np.random.default_rng(0).normal(size=(18, 2))
    with pytest.raises(ClusteringError, match="split_clusters: K=4 is impossible"):
        split_clusters(x, y, np.arange(18) % 2, 2)
