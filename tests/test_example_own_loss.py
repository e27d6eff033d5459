"""docs/examples/own_loss.py: a user-written loss, registered with the decorator, trains with model.fit."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "docs", "examples", "own_loss.py")


def test_the_own_loss_example_trains_and_its_loss_decreases():
    # Its own process: the example registers a loss name, which must not leak into the other tests' LOSSES.
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    done = subprocess.run([sys.executable, EXAMPLE], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    losses = [float(v) for v in done.stdout.split("metric loss per epoch:")[1].split()]
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_a_registered_loss_is_known_to_get_loss_the_config_and_keras():
    code = (
        "import runpy, keras\n"
        f"runpy.run_path({EXAMPLE!r}, run_name='example')\n"
        "from tfdnc.losses import LOSSES, get_loss\n"
        "from tfdnc.config import TrainConfig\n"
        "loss = get_loss('soft-contrastive', pos_margin=0.1, distance='cosine')\n"
        "assert 'soft_contrastive' in LOSSES and TrainConfig(loss='soft_contrastive').loss == 'soft_contrastive'\n"
        "again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))\n"
        "assert again.get_config() == loss.get_config() and again.pos_margin == 0.1\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-4000:]
