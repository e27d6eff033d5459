"""The export under the real `tensorflow_model_server`, on loopback ports.

Skipped unless the binary is on PATH (or named by $TFDNC_MODEL_SERVER). To
run it, install TF Serving's binary, e.g. on Debian/Ubuntu:

    echo "deb [arch=amd64] http://storage.googleapis.com/tensorflow-serving-apt stable tensorflow-model-server tensorflow-model-server-universal" \
        | sudo tee /etc/apt/sources.list.d/tensorflow-serving.list
    curl https://storage.googleapis.com/tensorflow-serving-apt/tensorflow-serving.release.pub.gpg | sudo apt-key add -
    sudo apt-get update && sudo apt-get install tensorflow-model-server
    pytest tests/test_serving_model_server.py

or run pytest inside a container that has it (the tensorflow/serving image
ships /usr/bin/tensorflow_model_server).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from tfdnc.backbones import build_backbone
from tfdnc.data.transforms import decode_image, eval_transform
from tfdnc.exporting import export_model
from tfdnc.exporting.signatures import encode_png
from tfdnc.serving import GrpcClient, RestClient, ServingError

BINARY = os.environ.get("TFDNC_MODEL_SERVER") or shutil.which("tensorflow_model_server")
pytestmark = pytest.mark.skipif(
    BINARY is None,
    reason="tensorflow_model_server is not on PATH: install the tensorflow-model-server apt "
    "package (or set TFDNC_MODEL_SERVER) and run `pytest tests/test_serving_model_server.py`; "
    "see this file's docstring",
)

SIZE = 16


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import keras

    from tfdnc.model import DivideAndConquerModel

    keras.utils.set_random_seed(0)
    model = DivideAndConquerModel(build_backbone("small_cnn", (SIZE, SIZE, 3), width=4),
                                  embedding_dim=8, k_max=2, initial_k=2)
    base = tmp_path_factory.mktemp("serving")
    rng = np.random.default_rng(0)
    export_model(model, base, "dnc", image_size=SIZE, gallery=(rng.normal(size=(5, 8)), list("abcde")),
                 top_k=3, max_k=5)
    config = base / "models.config"
    config.write_text(
        'model_config_list { config { name: "dnc" base_path: "%s" model_platform: "tensorflow" } }'
        % (base / "dnc")
    )
    rest, grpc_port = _free_port(), _free_port()
    log = open(base / "server.log", "w")
    proc = subprocess.Popen(
        [BINARY, f"--port={grpc_port}", f"--rest_api_port={rest}", "--rest_api_num_threads=2",
         f"--model_config_file={config}", "--enable_model_warmup=true"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    # The binary binds all interfaces by default; clients only use loopback.
    rest_client = RestClient(f"http://127.0.0.1:{rest}", "dnc", timeout=5, retries=0)
    deadline = time.time() + 120
    while True:
        try:
            if any(s["state"] == "AVAILABLE" for s in rest_client.status()):
                break
        except ServingError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("tensorflow_model_server did not come up: " + (base / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    yield model, rest, grpc_port
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def _reference(model, images):
    pixels = tf.stack([eval_transform(decode_image(b, 3), SIZE) for b in images])
    return model(pixels, training=False).numpy()


@pytest.mark.parametrize("kind", ["rest-inputs", "rest-instances", "grpc"])
def test_real_server_matches_keras(served, kind):
    model, rest, grpc_port = served
    if kind == "grpc":
        client = GrpcClient(f"127.0.0.1:{grpc_port}", "dnc")
    else:
        client = RestClient(f"http://127.0.0.1:{rest}", "dnc", request_format=kind.split("-")[1])
    rng = np.random.default_rng(1)
    images = [encode_png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(16, 16), (30, 21)]]
    np.testing.assert_allclose(client.embed(images), _reference(model, images), atol=1e-5)
    assert client.embed_learners(images).shape == (2, 2, 8)
    assert client.search(images).ids.shape == (2, 3)
    five = client.search(images, k=5)  # search_k, beyond top_k
    assert five.ids.shape == (2, 5)
    np.testing.assert_array_equal(five.indices[:, :3], client.search(images).indices)
    with pytest.raises(ServingError) as err:
        client.search(images, k=6)
    assert err.value.code == "INVALID_ARGUMENT" and "outside 1..5" in err.value.details
    with pytest.raises(ServingError) as err:
        client.embed_pixels(np.full((1, SIZE, SIZE, 3), np.inf, np.float32))
    assert err.value.code == "INVALID_ARGUMENT" and "NaN or infinite" in err.value.details
    assert set(client.metadata()) >= {"serving_default", "embed_pixels", "embed_learners", "search", "search_k"}
    with pytest.raises(ServingError) as err:
        client.embed([images[0], b"not an image"])
    assert err.value.code == "INVALID_ARGUMENT" and "image_bytes" in err.value.details
    with pytest.raises(ServingError):
        client.predict({"image_bytes": np.array(images, dtype=object)}, signature="nope")
    # Still serving after bad requests.
    np.testing.assert_allclose(client.embed(images[:1]), _reference(model, images[:1]), atol=1e-5)
