"""The parts of the Divide & Conquer loop, each on its own (tfdnc.training)."""

import os
import threading

import numpy as np
import pytest

from tfdnc.clustering import cluster_balanced, match_clusters, split_clusters, usable_mask
from tfdnc.data.sampling import ClusterBatchSampler, EpochGate
from tfdnc.datasets.base import ImageSet
from tfdnc.training import (
    ClusterState,
    ClusterStateStore,
    DivideAndConquerSchedule,
    KStep,
    LocalReclusterer,
    PhasePolicy,
    plan_assignments,
)
from tfdnc.training.recluster import Assignment, Reclusterer


# --- phase policy ---------------------------------------------------------------------------


def test_phase_policy_full_embedding_final_k1_and_frozen_epochs():
    policy = PhasePolicy(k_final=4, recluster_every=2, full_embedding_epoch=3, final_k1_epochs=2,
                         freeze_backbone_after_recluster=True)
    phases = [policy.phase(e, total_epochs=8, last_recluster_epoch=3) for e in range(8)]
    assert [p.full_embedding for p in phases] == [False, False, False, True, True, True, True, True]
    assert [p.final_k1 for p in phases] == [False] * 6 + [True, True]
    # Frozen on epoch 0 and on the epoch after the last re-clustering (3).
    assert [p.backbone_frozen for p in phases] == [True, False, False, False, True, False, False, False]
    assert not PhasePolicy(k_final=4).phase(0).backbone_frozen


def test_phase_policy_reclusters_every_t_but_not_after_the_last_epoch_nor_at_k1():
    policy = PhasePolicy(k_final=4, recluster_every=2)
    assert [e for e in range(6) if policy.reclusters_after(e, 6)] == [1, 3]
    assert [e for e in range(6) if policy.reclusters_after(e)] == [1, 3, 5]
    assert not any(PhasePolicy(k_final=1, recluster_every=1).reclusters_after(e, 9) for e in range(9))
    with pytest.raises(ValueError, match="recluster_every"):
        PhasePolicy(k_final=2, recluster_every=0)


# --- cluster-state store --------------------------------------------------------------------


def _state(k, valid_from, n=10):
    assignments = np.arange(n) % k
    return ClusterState(assignments, np.ones(n, bool), k, valid_from,
                        history=[{"epoch": e, "K": k} for e in range(valid_from)])


def test_store_keeps_two_generations_and_loads_the_one_valid_at_an_epoch(tmp_path):
    store = ClusterStateStore(tmp_path)
    assert store.load(5) is None
    store.save(_state(1, 0))
    store.save(_state(2, 2))
    store.save(_state(4, 4))
    assert [s.generation for s in store.generations()] == [2, 4]  # the oldest was dropped
    assert store.load(1) is None
    restored = store.load(3)
    assert restored.k == 2 and restored.valid_from == 2
    np.testing.assert_array_equal(restored.assignments, np.arange(10) % 2)
    assert [h["epoch"] for h in restored.history] == [0, 1]  # records before epoch 3 only
    assert store.load(9).k == 4


def test_store_read_only_and_unreadable_files(tmp_path, capsys):
    ClusterStateStore(tmp_path / "ro", read_only=True).save(_state(2, 1))
    assert not (tmp_path / "ro").exists()
    assert ClusterStateStore(None).load(3) is None
    store = ClusterStateStore(tmp_path)
    store.save(_state(2, 1))
    store.save(_state(4, 3))
    current, _ = store.paths
    with open(current, "wb") as f:
        f.write(b"not an npz")
    assert store.load(5).k == 2  # falls back to the previous generation
    assert "ignoring unreadable cluster state" in capsys.readouterr().out


# --- re-clustering ---------------------------------------------------------------------------


def _groups(seed=0):
    labels = np.repeat(np.arange(16), 5)
    groups = labels // 4
    centres = np.array([(1, 0), (0, 1), (-1, 0), (0, -1)], np.float32)
    rng = np.random.default_rng(seed)
    x = centres[groups] + 0.05 * rng.normal(size=(len(labels), 2)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels, groups


def test_plan_assignments_split_divides_a_fresh_clustering_at_the_current_k():
    x, labels, _ = _groups()
    current = np.zeros(len(labels), np.int64)
    new = plan_assignments(x, labels, current, 2, 2, seed=3, split=True, niter=20)
    fresh = cluster_balanced(x, labels, 2, seed=3, niter=20)
    fresh = match_clusters(fresh, current, 2, 2)[fresh]
    np.testing.assert_array_equal(new.split_parents, fresh)
    np.testing.assert_array_equal(new.assignments, split_clusters(x, labels, fresh, 2, seed=4, niter=20))
    assert new.k == 4 and np.array_equal(new.assignments // 2, new.split_parents)


def test_plan_assignments_keeps_learner_ids_when_k_stays():
    x, labels, groups = _groups()
    old = np.array([3, 1, 0, 2])[groups]
    new = plan_assignments(x, labels, old, 4, 4, seed=0, split=False, niter=20)
    np.testing.assert_array_equal(new.assignments, old)
    assert new.split_parents is None
    ones = plan_assignments(x, labels, old, 4, 1, seed=0, split=False)
    assert ones.k == 1 and not ones.assignments.any()


def test_local_reclusterer_embeds_the_set_under_the_eval_transform(make_tiny_model):
    from tfdnc.data.pipeline import make_eval_dataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(12, 16, 16, 1), dtype=np.uint8)
    train = ImageSet(labels=np.repeat(np.arange(4), 3), images=images)
    model = make_tiny_model(k_max=2)
    for features, network in (("penultimate", model.backbone), ("embedding", model)):
        got = LocalReclusterer(train, image_size=16, cluster_features=features, batch_size=5).features(model)
        want = network.predict(make_eval_dataset(train, 16, batch_size=5), verbose=0)
        want = want / np.linalg.norm(want, axis=1, keepdims=True)
        np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="cluster_features"):
        LocalReclusterer(train, image_size=16, cluster_features="pixels")


# --- the epoch gate ---------------------------------------------------------------------------


def test_epoch_gate_releases_waiters_and_close_ends_them():
    gate = EpochGate()
    got = []
    waiter = threading.Thread(target=lambda: got.append(gate.wait_for_epoch_after(-1, timeout=10)))
    waiter.start()
    gate.publish(2)
    waiter.join(5)
    closer = threading.Thread(target=lambda: got.append(gate.wait_for_epoch_after(2, timeout=10)))
    closer.start()
    gate.close()
    closer.join(5)
    assert got == [2, None]
    gate.reset()
    with pytest.raises(RuntimeError, match="no epoch after -1"):
        gate.wait_for_epoch_after(-1, timeout=0.05)


# --- the schedule wires parts it is given -------------------------------------------------------


class _ScriptedReclusterer(Reclusterer):
    """Returns features and ids chosen by the test, and records the calls."""

    def __init__(self, train_set, groups):
        self.train_set = train_set
        self.groups = groups
        self.calls = []

    def features(self, model):
        self.calls.append("features")
        return np.eye(len(self.groups), 2, dtype=np.float32)

    def assign(self, features, current, step, *, seed):
        self.calls.append(("assign", step.current_k, step.k, step.split))
        ids = self.groups % step.new_k
        return Assignment(ids, step.new_k, split_parents=ids // 2 if step.split else None)


class _LossWithClusterState:
    """Only what the model asks of a loss in `on_clusters_changed`."""

    def __init__(self):
        self.changes = 0

    def on_clusters_changed(self):
        self.changes += 1


def test_schedule_uses_the_given_reclusterer_and_store_and_tells_the_loss(make_tiny_model, tmp_path):
    labels = np.repeat(np.arange(16), 4)
    groups = labels // 4
    train = ImageSet(labels=labels, images=np.zeros((len(labels), 16, 16, 1), np.uint8))
    sampler = ClusterBatchSampler(labels, 2, 2)
    reclusterer = _ScriptedReclusterer(train, groups)
    store = ClusterStateStore(tmp_path)
    model = make_tiny_model(k_max=4)
    loss = _LossWithClusterState()
    model.metric_loss = loss  # the model forwards the notice to its loss
    schedule = DivideAndConquerSchedule(sampler, k_final=4, recluster_every=1,
                                        final_k1_epochs=1, verbose=0, reclusterer=reclusterer, store=store)
    schedule.set_model(model)
    schedule.set_params({"epochs": 4})
    schedule.on_train_begin()
    for epoch in range(4):
        schedule.on_epoch_begin(epoch)
        schedule.on_epoch_end(epoch, {})
    schedule.on_train_end()
    assert [c for c in reclusterer.calls if c != "features"] == [
        ("assign", 1, 1, True), ("assign", 2, 2, True), ("assign", 4, 4, False)]
    assert [r["K"] for r in schedule.history] == [1, 2, 4, 4]
    assert sampler.k == 1  # the final K = 1 epoch drew from one cluster of everything
    # Initial clusters, three re-clusterings, the final K = 1 phase.
    assert loss.changes == 5
    assert [s.generation for s in store.generations()] == [2, 3]
    np.testing.assert_array_equal(store.load(3).assignments, groups % 4)
    np.testing.assert_array_equal(schedule.usable, usable_mask(schedule.assignments, labels))


# --- the K rule, the reclusterer interface, the one cluster-state store -----------------------


def test_the_k_rule_doubles_to_k_final_or_starts_there():
    double = PhasePolicy(k_final=4, growth="double")
    assert double.initial_step() is None
    steps = [double.recluster_step(k) for k in (1, 2, 4)]
    assert [(s.k, s.split, s.new_k) for s in steps] == [(1, True, 2), (2, True, 4), (4, False, 4)]
    fixed = PhasePolicy(k_final=4, growth="fixed")
    assert fixed.initial_step() == KStep(current_k=1, k=4)
    assert not fixed.recluster_step(4).split and fixed.recluster_step(4).new_k == 4
    with pytest.raises(ValueError, match="growth"):
        PhasePolicy(k_final=4, growth="triple")


def test_a_reclusterer_must_implement_the_interface_and_the_schedule_refuses_a_mix():
    class Half(Reclusterer):
        def features(self, model):
            return None

    with pytest.raises(TypeError, match="assign"):
        Half()
    labels = np.repeat(np.arange(8), 2)
    train = ImageSet(labels=labels, images=np.zeros((len(labels), 8, 8, 1), np.uint8))
    sampler = ClusterBatchSampler(labels, 2, 2)
    reclusterer = LocalReclusterer(train, image_size=8)
    with pytest.raises(ValueError, match="image_size belong"):
        DivideAndConquerSchedule(sampler, reclusterer=reclusterer, k_final=2, image_size=8)
    with pytest.raises(ValueError, match="give `reclusterer=`"):
        DivideAndConquerSchedule(sampler, k_final=2)
    assert DivideAndConquerSchedule(sampler, reclusterer=reclusterer, k_final=2).reclusterer is reclusterer


def test_the_backup_generation_is_the_store_and_clusters_npz_its_copy(make_tiny_model, tmp_path):
    from tfdnc.rundir import RunDir
    from tfdnc.training.backup import GenerationBackup
    from tfdnc.training.generations import GenerationStore

    labels = np.repeat(np.arange(16), 4)
    groups = labels // 4
    train = ImageSet(labels=labels, images=np.zeros((len(labels), 16, 16, 1), np.uint8))
    sampler = ClusterBatchSampler(labels, 2, 2)
    run = RunDir(tmp_path / "run")
    schedule = DivideAndConquerSchedule(sampler, reclusterer=_ScriptedReclusterer(train, groups), k_final=4,
                                        recluster_every=1, verbose=0)
    model = make_tiny_model(k_max=4)
    backup = GenerationBackup(GenerationStore(run.backup), schedule)
    stages = []
    backup.store.commit = _recording(backup.store.commit, stages)
    for callback in (schedule, backup):
        callback.set_model(model)
        callback.set_params({"epochs": 3})
    schedule.on_train_begin()
    for epoch in range(2):
        schedule.on_epoch_begin(epoch)
        schedule.on_epoch_end(epoch, {})
        backup.on_epoch_end(epoch, {})
    assert not os.path.exists(run.clusters_previous)  # the schedule writes no files of its own
    newest = GenerationStore(run.backup).latest()
    assert newest.epoch == 2
    copy, kept = np.load(run.clusters), np.load(newest.clusters)
    assert int(copy["k"]) == int(kept["k"]) == 4
    np.testing.assert_array_equal(copy["assignments"], kept["assignments"])
    assert stages == [("backup", 1), ("committed", 1), ("backup", 2), ("committed", 2)]


def _recording(commit, stages):
    """`GenerationStore.commit` whose `on_stage` calls are recorded, then passed on."""

    def wrapped(generation, write, info=None, on_stage=None):
        def record(stage, number):
            stages.append((stage, number))
            on_stage(stage, number)

        return commit(generation, write, info=info, on_stage=record)

    return wrapped
