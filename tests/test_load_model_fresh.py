"""`tfdnc.load_model` in a fresh process: every tfdnc layer and optimizer a saved model holds is found.

`import tfdnc; tfdnc.load_model(path)` is the documented way in; it must not
depend on what the process happened to import before (the training process
had `tfdnc.backbones` and `tfdnc.optimizers` loaded, a fresh one has not).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras

from tfdnc.backbones import build_backbone
from tfdnc.model import DivideAndConquerModel
from tfdnc.optimizers import LayerDecayAdam

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = ("import json, sys, numpy as np, tfdnc; m = tfdnc.load_model(sys.argv[1]); "
          "print(type(m.optimizer).__name__, json.dumps(m(np.zeros((1, 16, 16, 3), 'float32')).numpy().tolist()))")


def _load_in_fresh_process(path) -> str:
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_a_model_with_frozen_batchnorm_loads_in_a_fresh_process(tmp_path):
    keras.utils.set_random_seed(0)
    model = DivideAndConquerModel(build_backbone("small_cnn", (16, 16, 3), freeze_batchnorm=True, width=4),
                                  embedding_dim=8, k_final=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.save(tmp_path / "model.keras")
    name, embedding = _load_in_fresh_process(tmp_path / "model.keras").split(" ", 1)
    assert name == "Adam"
    np.testing.assert_allclose(json.loads(embedding), model(np.zeros((1, 16, 16, 3), "float32")), atol=1e-5)


def test_a_hub_model_with_layer_decay_loads_in_a_fresh_process(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    vit = keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=4, num_layers=2, num_heads=2,
                                       hidden_dim=16, mlp_dim=32)
    vit.save_to_preset(str(tmp_path / "vit"))
    model = DivideAndConquerModel(build_backbone(f"hub:{tmp_path / 'vit'}", (16, 16, 3), freeze_layers=1),
                                  embedding_dim=8, k_final=2)
    model.compile(optimizer=LayerDecayAdam(1e-3, lr_multipliers={"vit_encoder/ln/gamma": 0.5}))
    model.save(tmp_path / "model.keras")
    name, embedding = _load_in_fresh_process(tmp_path / "model.keras").split(" ", 1)
    assert name == "LayerDecayAdam"
    np.testing.assert_allclose(json.loads(embedding), model(np.zeros((1, 16, 16, 3), "float32")), atol=1e-5)
