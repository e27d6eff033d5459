"""End to end inside one `model.fit`: K grows 1 -> 2 -> 4, re-clustering, Recall@1 rises."""

import json
import os

import keras
import numpy as np

from tfdnc.training import DivideAndConquerSchedule
from tfdnc.clustering import usable_mask
from tfdnc.data.pipeline import make_eval_dataset, make_train_dataset
from tfdnc.data.sampling import ClusterBatchSampler
from tfdnc.evaluation import recall_at_k


def _recall1(model, splits):
    embeddings = model.predict(make_eval_dataset(splits.test, 16), verbose=0)
    return recall_at_k(embeddings, splits.test.labels, ks=(1,))[1]


def test_k_grows_inside_one_fit_and_recall_improves(digits8, make_tiny_model, tmp_path):
    keras.utils.set_random_seed(0)
    model = make_tiny_model(embedding_dim=16, k_max=4, lr=3e-3)
    before = _recall1(model, digits8)
    train = digits8.train
    sampler = ClusterBatchSampler(train.labels, classes_per_batch=4, images_per_class=4, seed=0)
    steps = 15
    dataset = make_train_dataset(train, sampler, steps, image_size=16, crop_scale=(0.7, 1.0), flip=False)
    schedule = DivideAndConquerSchedule(sampler, train, k_final=4, image_size=16, recluster_every=2,
                                        kmeans_iters=20, state_dir=str(tmp_path / "state"), verbose=0)
    callbacks = [
        schedule,
        keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(str(tmp_path / "ckpt.keras")),
        keras.callbacks.TensorBoard(str(tmp_path / "tb")),
        keras.callbacks.EarlyStopping(monitor="loss", patience=50),
    ]
    history = model.fit(dataset, steps_per_epoch=steps, epochs=6, callbacks=callbacks, verbose=0)

    # K was 1 for epochs 1-2, 2 for 3-4, 4 for 5-6, all in the same fit.
    assert [record["K"] for record in schedule.history] == [1, 1, 2, 2, 4, 4]
    assert history.history["K"] == [1.0, 1.0, 2.0, 2.0, 4.0, 4.0]
    assert model.num_learners == 4
    # Four clusters, each trainable, the sampler drawing only usable images.
    assert sorted(np.unique(schedule.assignments)) == [0, 1, 2, 3]
    for c in range(4):
        in_cluster = schedule.usable & (schedule.assignments == c)
        classes, counts = np.unique(train.labels[in_cluster], return_counts=True)
        assert (counts >= 2).sum() >= 2
    np.testing.assert_array_equal(schedule.usable, usable_mask(schedule.assignments, train.labels))
    # The children of a split are subsets of their parent: a fresh K = 2
    # clustering of the current features (TPAMI), not the stale partition.
    state = np.load(tmp_path / "state" / "clusters.prev.npz")
    assert int(state["k"]) == 2
    np.testing.assert_array_equal(schedule.assignments // 2, schedule.split_parents)
    # Training moved retrieval.
    after = _recall1(model, digits8)
    assert after > before + 0.02, (before, after)
    # Standard callbacks kept working across re-clusterings.
    assert os.path.exists(tmp_path / "ckpt.keras")
    assert os.listdir(tmp_path / "tb")
    metadata = json.load(open(tmp_path / "backup" / "training_metadata.json"))
    assert metadata["epoch"] == 6


def test_fixed_growth_clusters_once_up_front_with_fixed_masks(digits8, make_tiny_model, tmp_path):
    model = make_tiny_model(embedding_dim=16, k_max=4, mask_mode="fixed")
    train = digits8.train
    sampler = ClusterBatchSampler(train.labels, 4, 4)
    dataset = make_train_dataset(train, sampler, 4, image_size=16, flip=False)
    schedule = DivideAndConquerSchedule(sampler, train, k_final=4, image_size=16, growth="fixed",
                                        recluster_every=1, kmeans_iters=10, full_embedding_epoch=2, verbose=0)
    model.fit(dataset, steps_per_epoch=4, epochs=3, callbacks=[schedule], verbose=0)
    assert [r["K"] for r in schedule.history] == [4, 4, 4]
    assert [r["full_embedding"] for r in schedule.history] == [False, False, True]
    masks = model.masks.mask_values()
    np.testing.assert_array_equal(masks.sum(axis=0), np.ones(16))  # disjoint blocks cover d
