"""Serving clients against TF Serving-format endpoints on loopback.

`LocalModelServer` answers REST (http.server) and gRPC (grpcio) in TF
Serving's formats by running the export; small hand-written HTTP servers
check retries, timeouts and error JSON.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import tensorflow as tf

from tfdnc.backbones import build_backbone
from tfdnc.data.transforms import decode_image, eval_transform
from tfdnc.exporting import export_model
from tfdnc.exporting.signatures import encode_png
from tfdnc.model import DivideAndConquerModel
from tfdnc.serving import ExportedModel, GrpcClient, RestClient, ServingError
from tfdnc.serving import client as client_module
from tfdnc.serving.tensors import from_json_value, to_json_value

from serving_fakes import LocalModelServer  # tests/serving_fakes.py

SIZE = 16
DIM = 8


def build_model(seed):
    import keras

    keras.utils.set_random_seed(seed)
    backbone = build_backbone("small_cnn", (SIZE, SIZE, 3), width=4)
    return DivideAndConquerModel(backbone, embedding_dim=DIM, k_max=2, initial_k=2)


def png(rng, h=20, w=24):
    return encode_png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def models():
    return build_model(0), build_model(1)


@pytest.fixture(scope="module")
def base(models, tmp_path_factory):
    base = tmp_path_factory.mktemp("base")
    rng = np.random.default_rng(0)
    gallery = (rng.normal(size=(7, DIM)), np.array([f"item{i}" for i in range(7)]))
    for model in models:  # versions 1 and 2
        export_model(model, base, "dnc", image_size=SIZE, gallery=gallery, top_k=3, max_k=5, warmup=False)
    return base


@pytest.fixture(scope="module")
def server(base):
    with LocalModelServer(base, "dnc") as server:
        yield server


@pytest.fixture(scope="module")
def local(base):
    return ExportedModel(base / "dnc")


CLIENTS = ["rest-inputs", "rest-instances", "grpc"]


def make_client(kind, server, **kwargs):
    if kind == "grpc":
        return GrpcClient(server.grpc_target, "dnc", **kwargs)
    return RestClient(server.rest_url, "dnc", request_format=kind.split("-")[1], **kwargs)


@pytest.fixture(params=CLIENTS)
def client(request, server):
    return make_client(request.param, server)


def reference(model, images):
    pixels = tf.stack([eval_transform(decode_image(b, 3), SIZE) for b in images])
    return model(pixels, training=False).numpy()


def test_exported_model_is_the_latest_version(local, models):
    assert local.version == 2
    images = [png(np.random.default_rng(1))]
    np.testing.assert_allclose(local.embed(images), reference(models[1], images), atol=1e-5)


def test_clients_return_what_the_export_computes(client, local, models):
    rng = np.random.default_rng(2)
    images = [png(rng, 16, 16), png(rng, 31, 17), png(rng, 22, 40)]
    embeddings = client.embed(images)
    np.testing.assert_allclose(embeddings, reference(models[1], images), atol=1e-5)
    np.testing.assert_allclose(embeddings, local.embed(images), atol=1e-6)
    pixels = rng.uniform(0, 255, (2, SIZE, SIZE, 3))
    np.testing.assert_allclose(client.embed_pixels(pixels), models[1](pixels.astype("float32")).numpy(), atol=1e-5)
    learners = client.embed_learners(images, batch_size=2)
    assert learners.shape == (3, 2, DIM)
    np.testing.assert_allclose(learners, local.embed_learners(images), atol=1e-6)
    hits = client.search(images)
    expected = local.search(images)
    np.testing.assert_array_equal(hits.indices, expected.indices)
    np.testing.assert_allclose(hits.similarities, expected.similarities, atol=1e-6)
    assert list(hits.ids[0]) == [
        f"item{j}" for j in expected.indices[0]
    ]
    records = hits.to_records(["a", "b", "c"])
    assert records[0]["query"] == "a" and records[0]["rank"] == 1 and len(records) == 9


def test_search_with_a_per_request_k(client, local):
    rng = np.random.default_rng(12)
    images = [png(rng), png(rng, 30, 18), png(rng, 17, 33)]
    default = client.search(images)  # `search`: the export's top_k
    assert default.ids.shape == (3, 3)
    for k, batch_size in [(5, None), (1, None), (4, 2)]:
        hits = client.search(images, batch_size=batch_size, k=k)  # `search_k`
        assert hits.ids.shape == hits.similarities.shape == hits.indices.shape == (3, k)
        expected = local.search(images, k=k)
        np.testing.assert_array_equal(hits.indices, expected.indices)
        np.testing.assert_allclose(hits.similarities, expected.similarities, atol=1e-6)
        assert hits.ids[0, 0] == f"item{hits.indices[0, 0]}"
        shared = min(k, 3)
        np.testing.assert_array_equal(hits.indices[:, :shared], default.indices[:, :shared])
        assert np.all(np.diff(hits.similarities, axis=1) <= 1e-6)  # best first
    with pytest.raises(ServingError, match="signature 'search_k'") as err:
        client.search(images, k=6)
    assert err.value.code == "INVALID_ARGUMENT" and "outside 1..5" in err.value.details
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="`k` must be an integer >= 1"):
            client.search(images, k=bad)


class OlderExport(client_module.ServingClient):
    """An export from before `search_k`: `search` with a fixed top-3 only."""

    def __init__(self):
        super().__init__("old")
        self.calls = []

    def _predict(self, inputs, signature):
        self.calls.append(signature)
        if signature != "search":
            raise self._error(f"unknown signature {signature!r}", "INVALID_ARGUMENT", signature)
        rows = len(inputs["image_bytes"])
        return {"ids": np.array([[b"x", b"y", b"z"]] * rows, dtype=object),
                "similarities": np.tile(np.float32([0.9, 0.5, 0.1]), (rows, 1)),
                "indices": np.tile(np.int32([4, 0, 2]), (rows, 1))}

    def _status(self):
        return [{"version": 1, "state": "AVAILABLE", "error": ""}]

    def _metadata(self):
        return {"search": {"inputs": {"image_bytes": {"dtype": "string", "shape": [-1]}}, "outputs": {}}}


def test_k_on_an_export_without_search_k_cuts_search_or_says_why():
    old = OlderExport()
    hits = old.search([b"a", b"b"], k=2)
    assert hits.ids.tolist() == [["x", "y"], ["x", "y"]] and hits.indices.shape == (2, 2)
    assert set(old.calls) == {"search"}  # never asked for a signature it lacks
    with pytest.raises(ValueError, match="no `search_k` signature and its `search` returns 3 hits"):
        old.search([b"a"], k=4)


def test_webp_requests_still_alpha_and_animated(client, models):
    """An RGB export embeds a WebP as the PNG of the same pixels (an animation: its first frame)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(14)
    frames = [rng.integers(0, 256, (21, 18, 3), dtype=np.uint8) for _ in range(2)]
    still, animated = io.BytesIO(), io.BytesIO()
    Image.fromarray(frames[0]).save(still, "WEBP", lossless=True)
    rgba = [Image.fromarray(np.dstack([f, np.full(f.shape[:2], 200, np.uint8)]), "RGBA") for f in frames]
    rgba[1].save(animated, "WEBP", lossless=True, exact=True, save_all=True, append_images=rgba[:1], duration=50)
    got = client.embed([still.getvalue(), animated.getvalue()])
    expected = reference(models[1], [encode_png(frames[0]), encode_png(frames[1])])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_specific_version(server, models):
    images = [png(np.random.default_rng(3))]
    for version, model in zip((1, 2), models):
        for kind in CLIENTS:
            got = make_client(kind, server, version=version).embed(images)
            np.testing.assert_allclose(got, reference(model, images), atol=1e-5)


def test_status_and_metadata(client, local):
    assert client.status() == [
        {"version": 1, "state": "AVAILABLE", "error": ""},
        {"version": 2, "state": "AVAILABLE", "error": ""},
    ]
    meta = client.metadata()
    assert meta == local.metadata() == local.export_metadata["signatures"]
    assert meta["serving_default"] == {
        "inputs": {"image_bytes": {"dtype": "string", "shape": [-1]}},
        "outputs": {"embeddings": {"dtype": "float32", "shape": [-1, DIM]}},
    }
    assert meta["embed_pixels"]["inputs"]["pixels"] == {"dtype": "float32", "shape": [-1, SIZE, SIZE, 3]}
    assert meta["search"]["outputs"]["ids"] == {"dtype": "string", "shape": [-1, 3]}


def test_bad_requests_name_model_version_and_signature(client):
    good = png(np.random.default_rng(4))
    with pytest.raises(ServingError) as err:
        client.embed([good, b"junk, not an image"])
    assert err.value.code == "INVALID_ARGUMENT"
    assert "model 'dnc'" in str(err.value) and "signature 'serving_default'" in str(err.value)
    assert "image_bytes`[1] (18 bytes) is not a JPEG/PNG/GIF/BMP/WebP image" in err.value.details

    with pytest.raises(ServingError) as err:  # a valid header, corrupt body: the decoder's error
        client.embed([b"GIF89a but not really"])
    assert err.value.code == "INVALID_ARGUMENT" and "serving_default" in str(err.value)

    with pytest.raises(ServingError, match="signature 'nope'") as err:
        client.predict({"image_bytes": np.array([good], dtype=object)}, signature="nope")
    assert err.value.code == "INVALID_ARGUMENT" and "nope" in err.value.details

    with pytest.raises(ServingError) as err:
        client.predict({"image_bytes": np.array([1.5, 2.5])})
    assert err.value.code == "INVALID_ARGUMENT" and "image_bytes" in err.value.details

    with pytest.raises(ServingError) as err:
        client.predict({"pixels": np.zeros((1, 9, 9, 3), np.float32)}, "embed_pixels")
    assert err.value.code == "INVALID_ARGUMENT" and "shape" in err.value.details

    with pytest.raises(ServingError) as err:  # not finite numbers computed from NaN pixels
        client.embed_pixels(np.full((1, SIZE, SIZE, 3), np.nan, np.float32))
    assert err.value.code == "INVALID_ARGUMENT" and "NaN or infinite" in err.value.details

    with pytest.raises(ServingError) as err:  # finite, but not pixels: embeddings without meaning
        client.embed_pixels(np.full((1, SIZE, SIZE, 3), 1e30, np.float32))
    assert err.value.code == "INVALID_ARGUMENT" and "outside [0, 255]" in err.value.details

    with pytest.raises(ServingError) as err:
        client.predict({"wrong_name": np.array([good], dtype=object)})
    assert err.value.code == "INVALID_ARGUMENT"

    # A list of bytes ending in NUL keeps its last byte (not NumPy's fixed-width bytes).
    with pytest.raises(ServingError) as err:
        client.predict({"image_bytes": [good, b"junk\0\0"]})
    assert "(6 bytes)" in err.value.details

    with pytest.raises(ValueError, match="no images"):
        client.embed([])
    with pytest.raises(ValueError, match="empty batch"):
        client.predict({"image_bytes": np.array([], dtype=object)})
    # The server is still fine.
    assert client.embed([good]).shape == (1, DIM)


def test_unknown_model_and_version_are_not_found(server):
    for kind in CLIENTS:
        other = make_client(kind, server)
        other.model = "other"
        with pytest.raises(ServingError, match="model 'other'") as err:
            other.status()
        assert err.value.code == "NOT_FOUND"
        with pytest.raises(ServingError, match="version 9") as err:
            make_client(kind, server, version=9).embed([png(np.random.default_rng(5))])
        assert err.value.code == "NOT_FOUND" and "Specific(dnc, 9)" in err.value.details


def _post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_rest_wire_format(server, local):
    """The JSON itself, as curl users write it (see docs/guides/serving.md)."""
    image = png(np.random.default_rng(6))
    b64 = {"b64": base64.b64encode(image).decode()}
    url = f"{server.rest_url}/v1/models/dnc:predict"
    status, answer = _post(url, {"instances": [b64, b64]})
    assert status == 200 and np.asarray(answer["predictions"]).shape == (2, DIM)
    np.testing.assert_allclose(answer["predictions"][0], local.embed([image])[0], atol=1e-6)
    status, answer = _post(url, {"signature_name": "search", "inputs": {"image_bytes": [b64]}})
    assert status == 200 and set(answer["outputs"]) == {"ids", "similarities", "indices"}
    assert isinstance(answer["outputs"]["ids"][0][0], str)
    status, answer = _post(url, {"signature_name": "search", "instances": [{"image_bytes": b64}]})
    assert status == 200 and set(answer["predictions"][0]) == {"ids", "similarities", "indices"}
    status, answer = _post(url, {"signature_name": "search_k", "inputs": {"image_bytes": [b64, b64], "k": [4, 2]}})
    assert status == 200 and np.asarray(answer["outputs"]["ids"]).shape == (2, 4)
    status, answer = _post(url, {"signature_name": "search_k", "instances": [{"image_bytes": b64, "k": 9}]})
    assert status == 400 and "`k`[0] = 9 is outside 1..5" in answer["error"]
    status, answer = _post(url, {"instances": [{"b64": base64.b64encode(b"junk").decode()}]})
    assert status == 400 and set(answer) == {"error"} and "image_bytes" in answer["error"]
    status, answer = _post(url, {"nothing": []})
    assert status == 400 and "instances" in answer["error"]
    status, answer = _post(f"{server.rest_url}/v1/models/nope:predict", {"instances": [b64]})
    assert status == 404 and "nope" in answer["error"]


def test_json_tensor_round_trip():
    rng = np.random.default_rng(7)
    floats = rng.normal(size=(3, 2, 4)).astype(np.float32)
    np.testing.assert_array_equal(from_json_value(json.loads(json.dumps(to_json_value(floats)))), floats)
    blobs = np.array([bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in (0, 5, 9)], dtype=object)
    back = from_json_value(json.loads(json.dumps(to_json_value(blobs))), "string")
    assert list(back) == list(blobs)
    assert all(set(v) == {"b64"} for v in to_json_value(blobs))


# --- retries, timeouts, unavailable ------------------------------------------------


class _Scripted(BaseHTTPRequestHandler):
    """Answers from a script of (status, body, delay) per request."""

    script: list = []
    seen: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append(self.path)
        status, body, delay = self.script[min(len(self.seen), len(self.script)) - 1]
        time.sleep(delay)
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def scripted():
    handler = type("Handler", (_Scripted,), {"script": [], "seen": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_rest_retries_unavailable_then_succeeds(scripted):
    handler, url = scripted
    unavailable = (503, {"error": "Servable not found: loading"}, 0)
    handler.script = [unavailable, unavailable, (200, {"outputs": [[0.6, 0.8]]}, 0)]
    client = RestClient(url, "dnc", retries=3, backoff=0.01)
    np.testing.assert_allclose(client.embed([b"\x89PNG\r\n\x1a\n"]), [[0.6, 0.8]])
    assert len(handler.seen) == 3 and handler.seen[0] == "/v1/models/dnc:predict"


def test_rest_gives_up_after_retries_and_never_retries_bad_input(scripted):
    handler, url = scripted
    handler.script = [(503, {"error": "overloaded"}, 0)]
    with pytest.raises(ServingError, match="UNAVAILABLE: HTTP 503: overloaded"):
        RestClient(url, "dnc", version=4, retries=2, backoff=0.01).embed([b"x"])
    assert len(handler.seen) == 3
    handler.seen.clear()
    handler.script = [(400, {"error": "bad image"}, 0)]
    with pytest.raises(ServingError, match=r"model 'dnc', version 4, signature 'search': INVALID_ARGUMENT"):
        RestClient(url, "dnc", version=4, retries=2, backoff=0.01).search([b"x"])
    assert len(handler.seen) == 1


def test_rest_timeout_is_deadline_exceeded(scripted):
    handler, url = scripted
    handler.script = [(200, {"outputs": [[1.0]]}, 1.5)]
    with pytest.raises(ServingError, match="within 0.3 s") as err:
        RestClient(url, "dnc", timeout=0.3, retries=2, backoff=0.01).embed([b"x"])
    assert err.value.code == "DEADLINE_EXCEEDED" and len(handler.seen) == 1


@pytest.mark.parametrize("kind", ["rest", "grpc"])
def test_unreachable_server_is_unavailable_after_retries(kind, monkeypatch):
    import socket

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = []
    monkeypatch.setattr(client_module.time, "sleep", sleeps.append)
    if kind == "rest":
        client = RestClient(f"http://127.0.0.1:{port}", "dnc", timeout=2, retries=2, backoff=0.5)
    else:
        client = GrpcClient(f"127.0.0.1:{port}", "dnc", timeout=2, retries=2, backoff=0.5)
    with pytest.raises(ServingError, match="cannot reach") as err:
        client.embed([b"x"])
    assert err.value.code == "UNAVAILABLE"
    assert sleeps == [0.5, 1.0]  # two retries with doubling backoff


def test_rest_client_needs_no_tensorflow():
    """The REST client is stdlib + NumPy: importing it must not load TensorFlow."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; from tfdnc.serving import RestClient, ServingError; "
            "RestClient('http://127.0.0.1:1', 'dnc'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'grpc')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": root}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_client_argument_checks():
    with pytest.raises(ValueError, match="request_format"):
        RestClient("http://127.0.0.1:1", "dnc", request_format="rows")
    with pytest.raises(ValueError, match="not both"):
        RestClient("http://127.0.0.1:1", "dnc", version=1, version_label="stable")
    with pytest.raises(ValueError, match="timeout"):
        GrpcClient("127.0.0.1:1", "dnc", timeout=0)
    assert RestClient("http://h:8501/", "dnc", version_label="stable").model_url == (
        "http://h:8501/v1/models/dnc/labels/stable"
    )
