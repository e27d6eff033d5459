"""In-process parts of tfdnc.distributed: TF_CONFIG checks, one-replica identities, sharded input, embedding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from tfdnc.data.pipeline import make_eval_dataset, make_train_dataset
from tfdnc.data.sampling import ClusterBatchSampler
from tfdnc.datasets.base import ImageSet
from tfdnc.distributed import all_gather_batch, build_strategy, read_tf_config, replica_loss_scale, worker_info
from tfdnc.distributed.collectives import replica_blocks
from tfdnc.evaluation.embedding import embed_images


def _tf_config(**overrides):
    config = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}
    config.update(overrides)
    return {"TF_CONFIG": json.dumps(config)}


def test_read_tf_config_accepts_a_worker_list():
    assert read_tf_config(_tf_config())["task"]["index"] == 1


@pytest.mark.parametrize(
    "environ, words",
    [
        ({}, "needs the TF_CONFIG"),
        ({"TF_CONFIG": "{not json"}, "not valid JSON"),
        (_tf_config(cluster={"ps": ["a:1"]}), "'cluster' must list"),
        (_tf_config(task={"type": "worker", "index": 2}), "out of range"),
        (_tf_config(task={"type": "ps", "index": 0}), "'task' must be"),
    ],
)
def test_read_tf_config_names_what_is_wrong(environ, words):
    with pytest.raises(ValueError, match=words):
        read_tf_config(environ)


def test_build_strategy_rejects_unknown_names_and_defaults_to_one_device():
    with pytest.raises(ValueError, match="--strategy"):
        build_strategy("horovod")
    strategy = build_strategy("default")
    assert strategy.num_replicas_in_sync == 1
    assert worker_info(strategy) == (0, 1, True)


def test_gather_and_scale_are_identities_on_one_replica():
    z = tf.random.normal((4, 3))
    labels = tf.constant([0, 0, 1, 1])
    gathered, gathered_labels = all_gather_batch(z, labels)
    assert gathered is z and gathered_labels is labels
    assert replica_loss_scale() == 1.0


def _toy(n=40):
    labels = np.arange(n) // 4
    images = np.random.default_rng(0).integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
    return ImageSet(images=images, labels=labels)


def test_shards_rebuild_the_planned_batch():
    train = _toy()
    batches = {}
    for num_shards, index in ((1, 0), (2, 0), (2, 1)):
        sampler = ClusterBatchSampler(train.labels, 4, 2, seed=3)
        sampler.set_clusters(train.labels % 2, k=2)
        dataset = make_train_dataset(train, sampler, 2, 8, num_shards=num_shards, shard_index=index)
        sampler.publish(0)
        iterator = iter(dataset)
        batches[num_shards, index] = [next(iterator) for _ in range(2)]
        sampler.close()
    for step in range(2):
        whole_x, whole_y = batches[1, 0][step]
        parts = [batches[2, i][step] for i in range(2)]
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole_y)
        # Same images, same crops: the augmentation seeds travel with the rows.
        np.testing.assert_allclose(np.concatenate([p[0]["images"] for p in parts]), whole_x["images"])
        clusters = np.concatenate([p[0]["cluster"] for p in parts])
        assert len(set(clusters.tolist())) == 1 and clusters[0] == step % 2


def test_shards_must_split_the_batch_evenly():
    train = _toy()
    sampler = ClusterBatchSampler(train.labels, 4, 2)
    with pytest.raises(ValueError, match="num_shards"):
        make_train_dataset(train, sampler, 3, 8, num_shards=3)
    with pytest.raises(ValueError, match="shard_index"):
        make_train_dataset(train, sampler, 3, 8, num_shards=2, shard_index=2)


def test_embed_images_streams_into_one_array_in_order():
    train = _toy(37)
    dataset = make_eval_dataset(train, 8, batch_size=5)
    fn = tf.function(lambda x: tf.reshape(x, (-1, 64))[:, :3] + 1.0)
    out = embed_images(fn, dataset, len(train))
    expected = train.images.reshape(37, 64)[:, :3].astype(np.float32) + 1.0
    np.testing.assert_allclose(out, expected)
    with pytest.raises(ValueError, match="num_rows=40"):
        embed_images(fn, dataset, 40)


def test_replica_blocks_cover_the_set():
    for n, r in ((10, 3), (9, 3), (1, 4), (1000, 7)):
        block = replica_blocks(n, r)
        assert block * r >= n and (block - 1) * r < n


def test_one_worker_gather_and_broadcast_pass_values_through():
    from tfdnc.distributed.collectives import broadcast_from_chief, gather_rows_to_chief, worker_rows as _worker_rows

    strategy = build_strategy("default")
    rows = np.random.default_rng(0).normal(size=(11, 3)).astype(np.float32)
    assert _worker_rows(strategy, 11) == (0, 11, 11)
    np.testing.assert_array_equal(gather_rows_to_chief(strategy, rows, 11), rows)
    with pytest.raises(ValueError, match="holds rows"):
        gather_rows_to_chief(strategy, rows[:5], 11)
    ids = np.arange(11) % 3
    np.testing.assert_array_equal(broadcast_from_chief(strategy, ids, (11,)), ids)
    with pytest.raises(ValueError, match="expected"):
        broadcast_from_chief(strategy, ids, (12,))
