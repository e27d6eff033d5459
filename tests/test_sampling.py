"""ClusterBatchSampler: one cluster per batch, class balance, round robin, determinism."""

import threading

import numpy as np
import pytest

from tfdnc.data.sampling import ClusterBatchSampler


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(12), rng.integers(3, 15, size=12))
    assignments = labels % 3  # 3 clusters of 4 classes
    return labels, assignments


def test_every_batch_comes_from_one_cluster_round_robin_and_is_class_balanced():
    labels, assignments = _setup()
    sampler = ClusterBatchSampler(labels, classes_per_batch=3, images_per_class=4, seed=1)
    sampler.set_clusters(assignments, k=3)
    batches = list(sampler.plan_epoch(epoch=0, steps=30))
    assert len(batches) == 30
    for step, (indices, cluster) in enumerate(batches):
        assert cluster == step % 3
        assert len(indices) == 12
        assert set(assignments[indices]) == {cluster}
        classes, counts = np.unique(labels[indices], return_counts=True)
        assert len(classes) == 3 and set(counts) == {4}


def test_cluster_with_fewer_classes_than_p_fills_batch_with_even_counts():
    labels = np.repeat(np.arange(4), 20)
    sampler = ClusterBatchSampler(labels, classes_per_batch=4, images_per_class=4)
    sampler.set_clusters(labels // 2, k=2)  # 2 classes per cluster
    for indices, cluster in sampler.plan_epoch(0, 6):
        classes, counts = np.unique(labels[indices], return_counts=True)
        assert len(indices) == 16 and len(classes) == 2
        assert all(c % 2 == 0 for c in counts)


def test_images_are_used_before_repeats_within_a_class():
    labels = np.repeat(np.arange(2), 16)
    sampler = ClusterBatchSampler(labels, classes_per_batch=2, images_per_class=8)
    seen = np.concatenate([i for i, _ in sampler.plan_epoch(0, 2)])
    assert len(np.unique(seen)) == 32  # two batches of 16 cover all 32 images once


def test_plans_are_deterministic_per_seed_and_epoch():
    labels, assignments = _setup()
    a = ClusterBatchSampler(labels, 3, 4, seed=5)
    b = ClusterBatchSampler(labels, 3, 4, seed=5)
    for s in (a, b):
        s.set_clusters(assignments, 3)
    plan = lambda s, e: np.concatenate([i for i, _ in s.plan_epoch(e, 9)])  # noqa: E731
    np.testing.assert_array_equal(plan(a, 2), plan(b, 2))
    assert not np.array_equal(plan(a, 2), plan(a, 3))


def test_unusable_images_are_never_drawn_and_empty_clusters_raise():
    labels, assignments = _setup()
    usable = np.random.default_rng(0).random(len(labels)) > 0.3
    sampler = ClusterBatchSampler(labels, 2, 2)
    sampler.set_clusters(assignments, 3, usable)
    drawn = np.concatenate([i for i, _ in sampler.plan_epoch(0, 30)])
    assert usable[drawn].all()
    lone = np.arange(len(labels))  # every image its own class
    with pytest.raises(ValueError, match="cluster 0 has no class with 2 usable images"):
        ClusterBatchSampler(lone, 2, 2)


def test_argument_validation():
    with pytest.raises(ValueError, match="images_per_class"):
        ClusterBatchSampler(np.zeros(4), 2, 1)
    sampler = ClusterBatchSampler(np.repeat([0, 1], 4), 2, 2)
    with pytest.raises(ValueError, match="3 cluster assignments for 8 images"):
        sampler.set_clusters(np.zeros(3), 1)


def test_publish_releases_waiters_and_close_ends_them():
    sampler = ClusterBatchSampler(np.repeat([0, 1], 4), 2, 2)
    results = []
    waiter = threading.Thread(target=lambda: results.append(sampler.wait_for_epoch_after(-1, timeout=10)))
    waiter.start()
    sampler.publish(3)
    waiter.join(5)
    assert results == [3]
    closer = threading.Thread(target=lambda: results.append(sampler.wait_for_epoch_after(3, timeout=10)))
    closer.start()
    sampler.close()
    closer.join(5)
    assert results == [3, None]
    sampler.reset_publication()
    with pytest.raises(RuntimeError, match="no epoch after -1 was published"):
        sampler.wait_for_epoch_after(-1, timeout=0.05)
