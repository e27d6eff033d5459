"""`model.fit(x, y)` under MirroredStrategy over 2 logical CPU devices: the schedule runs, K grows.

Logical devices must be configured before TensorFlow initialises, so the
fit runs in a fresh interpreter (this file as a script), as in
tests/test_distributed_mirrored.py; the test reads its JSON report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def script_main(out_path: str) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np

    import tfdnc

    sys.path.insert(0, HERE)
    from test_keras_fit import SIZE, squares

    x, y = squares(classes=8, per_class=6)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = tfdnc.DivideAndConquerModel(tfdnc.build_backbone("small_cnn", (SIZE, SIZE, 3), width=8),
                                            embedding_dim=16, k_final=2)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=tfdnc.losses.MultiSimilarityLoss())
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0, validation_data=(x, y))
    report = {"replicas": strategy.num_replicas_in_sync, "K": history.history["K"],
              "loss": history.history["loss"], "val_loss": history.history["val_loss"],
              "num_learners": model.num_learners,
              "finite": bool(np.isfinite(model.predict(x, verbose=0)).all())}
    with open(out_path, "w") as f:
        json.dump(report, f)


def test_fit_on_arrays_under_mirrored_strategy_runs_the_schedule(tmp_path):
    out = tmp_path / "report.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, __file__, str(out)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["replicas"] == 2
    assert report["K"] == [1.0, 2.0] and report["num_learners"] == 2
    assert len(report["val_loss"]) == 2 and report["finite"]


if __name__ == "__main__":
    script_main(sys.argv[1])
