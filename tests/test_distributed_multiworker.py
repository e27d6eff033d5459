"""Two workers on loopback ports train with MultiWorkerMirroredStrategy and re-cluster.

The test starts this file twice as a worker process (with `TF_CONFIG`), each
trains a few steps through `fit_custom_loop` with a `DistributedSchedule`
that re-clusters (K 1 -> 2) between the epochs, and saves its weights, its
cluster assignment and (the chief) the gathered clustering features.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIZE = 12


def _free_ports(n: int) -> list[int]:
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _toy_set():
    from tfdnc.datasets.base import ImageSet

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 6)
    # Two visual groups of classes, so the 2-means split has structure.
    base = np.where(labels[:, None, None, None] < 4, 60, 190).astype(np.float32)
    images = np.clip(base + rng.normal(0, 40, size=(len(labels), SIZE, SIZE, 1)), 0, 255).astype(np.uint8)
    return ImageSet(images=images, labels=labels, name="toy")


def worker_main(index: int, out_dir: str) -> None:
    import tensorflow as tf

    from tfdnc.distributed.strategy import build_strategy, synchronize_batchnorm, worker_info

    strategy = build_strategy("multi-worker")  # before any other TF op
    import keras

    from tfdnc.backbones import build_backbone
    from tfdnc.data.pipeline import make_train_dataset
    from tfdnc.data.sampling import ClusterBatchSampler
    from tfdnc.distributed.driver import fit_custom_loop, per_replica_dataset_fn
    from tfdnc.data.pipeline import make_eval_dataset
    from tfdnc.evaluation.embedding import embed_images
    from tfdnc.training.distributed import DistributedSchedule
    from tfdnc.model import DivideAndConquerModel

    info = worker_info(strategy)
    assert info.index == index and info.count == 2, info
    train = _toy_set()
    keras.utils.set_random_seed(3)
    with strategy.scope():
        backbone = build_backbone("small_cnn", (SIZE, SIZE, 1), width=4)
        model = DivideAndConquerModel(backbone, embedding_dim=8, k_max=2)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        synchronize_batchnorm(model)
    sampler = ClusterBatchSampler(train.labels, 4, 2, seed=0)
    steps = 2

    def make(num_shards, shard_index):
        return make_train_dataset(train, sampler, steps, SIZE, num_shards=num_shards, shard_index=shard_index)

    state_dir = os.path.join(out_dir, f"state{index}")
    schedule = DistributedSchedule(strategy, sampler, train, k_final=2, image_size=SIZE, recluster_every=1,
                                   kmeans_iters=10, embed_batch_size=16, gather_chunk_rows=7,
                                   state_dir=state_dir, verbose=0)
    gathered = {}
    features_of = schedule.clustering_features

    def recording_features():
        features = features_of()
        gathered["features"] = features
        # What one process would cluster: the whole set embedded at once.
        fn = tf.function(lambda images: model.backbone(images, training=False))
        whole = embed_images(fn, make_eval_dataset(train, SIZE, batch_size=16), len(train))
        gathered["reference"] = whole / np.linalg.norm(whole, axis=1, keepdims=True)
        return features

    schedule.clustering_features = recording_features
    history = fit_custom_loop(model, strategy, per_replica_dataset_fn(make, sampler.batch_size),
                              steps_per_epoch=steps, epochs=2, callbacks=[schedule], verbose=0)
    np.savez(
        os.path.join(out_dir, f"worker{index}.npz"),
        *[np.asarray(v) for v in model.weights],
        assignments=schedule.assignments,
        k=model.num_learners,
        losses=np.asarray(history.history["loss"]),
        features=gathered["features"] if gathered["features"] is not None else np.zeros(0),
        reference=gathered["reference"],
        is_chief=info.is_chief,
    )


def test_two_workers_stay_in_sync_through_a_reclustering(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                   CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
        log = open(tmp_path / f"worker{index}.log", "w")
        procs.append((subprocess.Popen([sys.executable, __file__, str(index), str(tmp_path)], env=env,
                                       stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log))
    try:
        for proc, _ in procs:
            proc.wait(timeout=540)
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
            log.close()
    for index, (proc, _) in enumerate(procs):
        text = (tmp_path / f"worker{index}.log").read_text()
        assert proc.returncode == 0, f"worker {index} failed:\n{text[-4000:]}"
    w0, w1 = (np.load(tmp_path / f"worker{i}.npz") for i in range(2))
    weights = sorted(k for k in w0.files if k.startswith("arr_"))
    assert weights
    for key in weights:
        np.testing.assert_allclose(w0[key], w1[key], rtol=0, atol=1e-6, err_msg=key)
    # Training moved the weights off their initial values... on both alike.
    assert int(w0["k"]) == int(w1["k"]) == 2
    np.testing.assert_array_equal(w0["assignments"], w1["assignments"])
    assert set(np.unique(w0["assignments"])) == {0, 1}
    np.testing.assert_allclose(w0["losses"], w1["losses"], rtol=1e-6)
    assert bool(w0["is_chief"]) and not bool(w1["is_chief"])
    # The chief gathered every worker's rows in the set's order: compare with
    # its own embedding of the whole set (weights as of the re-clustering).
    features = w0["features"]
    assert features.shape[0] == 48 and w1["features"].size == 0
    np.testing.assert_allclose(features, w0["reference"], atol=1e-5)
    # Only the chief writes the cluster state.
    assert (tmp_path / "state0" / "clusters.npz").exists()
    assert not (tmp_path / "state1").exists()


if __name__ == "__main__":
    worker_main(int(sys.argv[1]), sys.argv[2])
