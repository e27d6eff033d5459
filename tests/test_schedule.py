"""DivideAndConquerSchedule on its own: growth, frozen epochs, K = 1 runs (hooks driven by hand)."""

import numpy as np
import pytest

from tfdnc.training import DivideAndConquerSchedule
from tfdnc.data.sampling import ClusterBatchSampler
from tfdnc.datasets.base import ImageSet


def _four_groups(classes_per_group=4, images_per_class=5):
    """Labels of 4 groups of classes; group g holds classes 4g .. 4g + 3."""
    labels = np.repeat(np.arange(4 * classes_per_group), images_per_class)
    groups = labels // classes_per_group
    return labels, groups


def _features(groups, centres, seed=0):
    rng = np.random.default_rng(seed)
    x = np.asarray(centres, np.float32)[groups] + 0.01 * rng.normal(size=(len(groups), 2)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _schedule(model, labels, **options):
    images = np.zeros((len(labels), 16, 16, 1), np.uint8)
    train = ImageSet(labels=labels, images=images, name="groups")
    sampler = ClusterBatchSampler(labels, classes_per_batch=2, images_per_class=2)
    options = {"k_final": 4, "image_size": 16, "recluster_every": 2, "kmeans_iters": 20, "verbose": 0, **options}
    schedule = DivideAndConquerSchedule(sampler, train, **options)
    schedule.set_model(model)
    return schedule


def _run_epochs(schedule, epochs):
    """Drives the callback's hooks as fit would, without training steps."""
    schedule.set_params({"epochs": epochs})
    schedule.on_train_begin()
    frozen = []
    for epoch in range(epochs):
        schedule.on_epoch_begin(epoch)
        frozen.append(schedule.model.backbone_frozen)
        schedule.on_epoch_end(epoch, {})
    schedule.on_train_end()
    return frozen


def test_growth_splits_a_fresh_clustering_not_the_stale_partition(make_tiny_model):
    labels, groups = _four_groups()
    schedule = _schedule(make_tiny_model(k_max=4), labels)
    # Old features: groups {0, 1} and {2, 3} close together -> K = 2 clusters.
    old = _features(groups, [(1, 0), (1, 0.1), (0, 1), (0.1, 1)])
    schedule.clustering_features = lambda: old
    schedule.recluster(epoch=1)
    assert schedule.k == 2
    # The features move: now {0, 2} and {1, 3} belong together.
    new = _features(groups, [(1, 0), (-1, 0.05), (1, 0.1), (-1, 0)], seed=1)
    schedule.clustering_features = lambda: new
    schedule.recluster(epoch=3)
    assert schedule.k == 4
    # Siblings 2c, 2c + 1 come from one fresh cluster: groups 0 and 2 are
    # siblings (they are near each other now), 0 and 1 are not.
    parent_of_group = {g: set(schedule.assignments[groups == g] // 2) for g in range(4)}
    assert all(len(p) == 1 for p in parent_of_group.values())
    assert parent_of_group[0] == parent_of_group[2] and parent_of_group[1] == parent_of_group[3]
    assert parent_of_group[0] != parent_of_group[1]
    np.testing.assert_array_equal(schedule.assignments // 2, schedule.split_parents)


def test_frozen_backbone_epochs_include_epoch_zero(make_tiny_model):
    labels, groups = _four_groups()
    schedule = _schedule(make_tiny_model(k_max=4), labels, k_final=2, freeze_backbone_after_recluster=True)
    schedule.clustering_features = lambda: _features(groups, [(1, 0), (1, 0.1), (0, 1), (0.1, 1)])
    # Re-clustered after epochs 2 and 4 (T = 2): frozen on 1, 3, 5 (1-based).
    assert _run_epochs(schedule, 5) == [True, False, True, False, True]


@pytest.mark.parametrize("growth", ["double", "fixed"])
def test_k_final_1_never_embeds_the_training_set(make_tiny_model, growth):
    labels, _ = _four_groups()
    schedule = _schedule(make_tiny_model(k_max=1), labels, k_final=1, growth=growth, recluster_every=1)
    calls = []
    schedule.clustering_features = lambda: calls.append(1) or np.eye(len(labels), 2, dtype=np.float32)
    _run_epochs(schedule, 4)
    assert calls == [] and schedule.k == 1
    assert all(not record.get("reclustered") for record in schedule.history)


def test_k_final_2_does_recluster(make_tiny_model):
    labels, groups = _four_groups()
    schedule = _schedule(make_tiny_model(k_max=2), labels, k_final=2, recluster_every=1)
    calls = []

    def features():
        calls.append(1)
        return _features(groups, [(1, 0), (1, 0.1), (0, 1), (0.1, 1)])

    schedule.clustering_features = features
    _run_epochs(schedule, 3)
    assert len(calls) == 2 and schedule.k == 2
