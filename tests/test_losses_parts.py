"""Losses as parts: reducers, miner objects, `reduction`, soft-margin triplets, the learner contract."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from test_losses import ALL, SHAPES, batch, np_dist
from tfdnc.losses import (
    AvgNonZeroReducer,
    ContrastiveLoss,
    MarginLoss,
    MeanReducer,
    MultiSimilarityLoss,
    SumReducer,
    TripletLoss,
    get_loss,
    get_reducer,
)
from tfdnc.miners import (
    AllTripletsMiner,
    BatchHardMiner,
    ClosestBeyondCutoffMiner,
    MultiSimilarityMiner,
    SemiHardMiner,
)

# --- reducers, one test per mode -------------------------------------------------

TERMS = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 0.5]], np.float32)
MASK = np.array([[True, True, False], [True, True, True]])
WEIGHTS = np.array([2.0, 0.5], np.float32)


def test_mean_reducer_averages_the_valid_terms():
    assert float(MeanReducer()(TERMS, MASK)) == pytest.approx((0 + 1 + 3 + 0 + 0.5) / 5)


def test_avg_non_zero_reducer_averages_the_valid_non_zero_terms():
    assert float(get_reducer("avg_non_zero")(TERMS, MASK)) == pytest.approx((1 + 3 + 0.5) / 3)
    assert float(AvgNonZeroReducer()(np.zeros((2, 2), np.float32))) == 0.0  # no term: 0, not NaN


def test_sum_reducer_sums_the_valid_terms():
    assert float(SumReducer()(TERMS, MASK)) == pytest.approx(4.5)


def test_per_sample_weights_weigh_each_anchors_terms():
    w = WEIGHTS[:, None] * MASK
    expected_mean = (TERMS * w).sum() / w.sum()
    expected_nz = (TERMS * w).sum() / (w * (TERMS > 0)).sum()
    assert float(MeanReducer()(TERMS, MASK, WEIGHTS)) == pytest.approx(expected_mean)
    assert float(AvgNonZeroReducer()(TERMS, MASK, WEIGHTS)) == pytest.approx(expected_nz)
    assert float(SumReducer()(TERMS, MASK, WEIGHTS)) == pytest.approx((TERMS * w).sum())


def test_get_reducer_rejects_unknown_names():
    with pytest.raises(ValueError, match="reducer"):
        get_reducer("median")


# --- reducers inside losses ----------------------------------------------------------


def np_triplet_terms(labels, d, margin, soft=False):
    """All valid triplet terms with their anchor index."""
    terms, anchors = [], []
    n = len(labels)
    for a in range(n):
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            for k in range(n):
                if labels[k] == labels[a]:
                    continue
                gap = d[a, p] - d[a, k]
                terms.append(np.log1p(np.exp(gap)) if soft else max(gap + margin, 0.0))
                anchors.append(a)
    return np.array(terms), np.array(anchors)


@pytest.mark.parametrize("seed,classes,per_class,dim", SHAPES)
def test_triplet_reducer_modes_match_reference(seed, classes, per_class, dim):
    labels, x = batch(seed, classes, per_class, dim)
    terms, anchors = np_triplet_terms(labels, np_dist(x), 0.3)
    expected = {"mean": terms.mean(), "sum": terms.sum(), "avg_non_zero": terms.sum() / (terms > 0).sum()}
    for mode, ref in expected.items():
        value = TripletLoss(margin=0.3, reducer=mode)(labels, x)
        assert float(value) == pytest.approx(ref, rel=1e-4), mode
    w = np.random.default_rng(seed).uniform(0.1, 2.0, len(labels)).astype(np.float32)
    value = TripletLoss(margin=0.3, reducer="mean")(labels, x, sample_weight=w)
    assert float(value) == pytest.approx((w[anchors] * terms).sum() / w[anchors].sum(), rel=1e-4)


def test_unit_weights_change_nothing_and_weights_reach_every_loss():
    labels, x = batch(3, 4, 3, 8)
    for name, options in ALL:
        if name == "margin":
            options = {**options, "negative_sampling": "closest_beyond_cutoff"}
        loss = get_loss(name, **options)
        plain = float(loss(labels, x))
        assert float(loss(labels, x, sample_weight=np.ones(len(labels), np.float32))) == pytest.approx(plain, rel=1e-5)
        w = np.where(labels == labels[0], 5.0, 0.2).astype(np.float32)
        assert np.isfinite(float(loss(labels, x, sample_weight=w)))


def test_reduction_is_refused_with_a_pointer_to_reducer_and_old_configs_still_load():
    with pytest.raises(ValueError, match="reducer"):
        TripletLoss(reduction="sum")
    config = TripletLoss(margin=0.1).get_config()
    assert "reduction" not in config
    old = {**config, "reduction": "sum_over_batch_size"}  # saved before the change
    assert TripletLoss.from_config(old).get_config() == config


# --- miner objects -----------------------------------------------------------------


@pytest.mark.parametrize("mining,miner", [("batch_all", AllTripletsMiner()), ("batch_hard", BatchHardMiner()),
                                          ("semi_hard", SemiHardMiner())])
def test_triplet_miner_objects_match_the_mining_names(mining, miner):
    labels, x = batch(1, 4, 3, 8)
    by_name = TripletLoss(mining=mining)(labels, x)
    by_object = TripletLoss(miner=miner)(labels, x)
    assert float(by_object) == pytest.approx(float(by_name), rel=1e-6)


def test_pair_and_margin_miners_are_swappable_and_serialise():
    labels, x = batch(2, 4, 3, 8)
    default = MultiSimilarityLoss(epsilon=0.3)(labels, x)
    assert float(MultiSimilarityLoss(miner=MultiSimilarityMiner(0.3))(labels, x)) == pytest.approx(float(default))
    a = MarginLoss(negative_sampling="closest_beyond_cutoff")(labels, x)
    b = MarginLoss(miner=ClosestBeyondCutoffMiner(0.5))(labels, x)
    assert float(a) == pytest.approx(float(b))
    for loss in (TripletLoss(miner=BatchHardMiner()), ContrastiveLoss(miner=MultiSimilarityMiner(0.2)),
                 MarginLoss(miner=ClosestBeyondCutoffMiner(0.3), reducer="mean")):
        restored = keras.losses.deserialize(keras.losses.serialize(loss))
        assert restored.get_config() == loss.get_config()
        assert float(restored(labels, x)) == pytest.approx(float(loss(labels, x)), rel=1e-6)


# --- soft margin -------------------------------------------------------------------


@pytest.mark.parametrize("seed,classes,per_class,dim", SHAPES)
@pytest.mark.parametrize("mining", ["batch_all", "batch_hard", "semi_hard"])
def test_soft_margin_triplet_matches_reference(seed, classes, per_class, dim, mining):
    labels, x = batch(seed, classes, per_class, dim)
    d = np_dist(x)
    n = len(labels)
    terms = []
    for a in range(n):
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [k for k in range(n) if labels[k] != labels[a]]
        if mining == "batch_all":
            terms += [np.log1p(np.exp(d[a, p] - d[a, k])) for p in pos for k in neg]
        elif mining == "batch_hard":
            terms.append(np.log1p(np.exp(max(d[a, pos]) - min(d[a, neg]))))
        else:
            for p in pos:
                farther = [d[a, k] for k in neg if d[a, k] > d[a, p]]
                terms.append(np.log1p(np.exp(d[a, p] - (min(farther) if farther else max(d[a, neg])))))
    value = TripletLoss(mining=mining, soft_margin=True).compute_loss_and_stats(labels, x)[0]
    assert float(value) == pytest.approx(np.mean(terms), rel=1e-4)
    assert get_loss("triplet", soft_margin=True).get_config()["soft_margin"] is True


# --- the learner contract, and where the code lives ------------------------------------


def test_every_loss_accepts_a_learner_and_cluster_changes():
    labels, x = batch(0, 4, 2, 8)
    for name, options in ALL + [("npair", {}), ("lifted", {}), ("angular", {})]:
        if name == "margin":
            options = {**options, "negative_sampling": "closest_beyond_cutoff"}
        loss = get_loss(name, **options)
        plain = float(loss.compute_loss_and_stats(labels, x)[0])
        assert float(loss.compute_loss_and_stats(labels, x, learner=tf.constant(1))[0]) == pytest.approx(plain)
        loss.on_clusters_changed()


def test_losses_do_not_import_layers():
    code = "import sys, tfdnc.losses; assert not any(m.startswith('tfdnc.layers') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
