"""A loopback stand-in for TF Serving, used by tests/test_serving.py.

`LocalModelServer` serves the versions under BASE/NAME on loopback, over
REST (http.server) and gRPC (grpcio), following TF Serving's request and
response formats: `:predict` with "instances" or "inputs", {"b64": ...}
strings, "predictions"/"outputs" answers, `{"error": ...}` with the HTTP
status of the gRPC code, model status and metadata. It runs the SavedModel
with `tf.saved_model.load`, so it checks the export and the clients, not TF
Serving itself (test_serving_model_server.py runs the real binary).

Example:
>>> with LocalModelServer("exports", "dnc") as server:
...     RestClient(server.rest_url, model="dnc").embed(["a.png"])
...     GrpcClient(server.grpc_target, model="dnc").embed(["a.png"])
"""

from __future__ import annotations

import json
import os
import re
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from tfdnc.exporting.versions import list_versions
from tfdnc.serving.errors import HTTP_STATUS, ServingError
from tfdnc.serving.local import ExportedModel
from tfdnc.serving.tensors import from_json_value, to_json_value

LOOPBACK = "127.0.0.1"


class _Failure(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class _Repository:
    """Loads versions of one model on demand; resolves TF Serving model specs."""

    def __init__(self, base: str, name: str):
        self.base = os.fspath(base)
        self.name = name
        self._loaded: dict[int, ExportedModel] = {}
        self._lock = threading.Lock()

    @property
    def model_dir(self) -> str:
        return os.path.join(self.base, self.name)

    def get(self, name: str, version: int | None, label: str | None = None) -> ExportedModel:
        if name != self.name:
            raise _Failure("NOT_FOUND", f"Servable not found for request: Latest({name})")
        if label:
            raise _Failure("UNIMPLEMENTED", "version labels are not supported by LocalModelServer")
        versions = list_versions(self.model_dir)
        if version is None:
            if not versions:
                raise _Failure("NOT_FOUND", f"Servable not found for request: Latest({name})")
            version = versions[-1]
        if version not in versions:
            raise _Failure("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")
        with self._lock:
            if version not in self._loaded:
                self._loaded[version] = ExportedModel(os.path.join(self.model_dir, str(version)))
            return self._loaded[version]

    def predict(self, name, version, signature, inputs) -> tuple[int, dict]:
        model = self.get(name, version)
        try:
            return model.version, model.predict(inputs, signature or "serving_default")
        except ServingError as err:
            raise _Failure(err.code, err.details) from None
        except ValueError as err:
            raise _Failure("INVALID_ARGUMENT", str(err)) from None

    def status(self, name, version) -> list[tuple[int, str]]:
        if version is not None:
            return [(self.get(name, version).version, "AVAILABLE")]
        self.get(name, None)
        return [(v, "AVAILABLE") for v in list_versions(self.model_dir)]


class LocalModelServer:
    """TF Serving's REST and gRPC APIs for BASE/NAME on 127.0.0.1.

    Args:
        base, name: the export base folder and model name.
        rest_port, grpc_port: 0 picks free ports (see `rest_url`,
            `grpc_target` after `start()`).
    """

    def __init__(self, base: str | os.PathLike, name: str, rest_port: int = 0, grpc_port: int = 0):
        self.repository = _Repository(os.fspath(base), name)
        self._rest_port = rest_port
        self._grpc_port = grpc_port
        self._http = None
        self._grpc = None

    @property
    def rest_url(self) -> str:
        return f"http://{LOOPBACK}:{self._http.server_address[1]}"

    @property
    def grpc_target(self) -> str:
        return f"{LOOPBACK}:{self._grpc_port}"

    def start(self) -> "LocalModelServer":
        self._start_rest()
        self._start_grpc()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- REST ----------------------------------------------------------------
    def _start_rest(self) -> None:
        repository = self.repository

        class Handler(_RestHandler):
            repo = repository

        self._http = ThreadingHTTPServer((LOOPBACK, self._rest_port), Handler)
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    # --- gRPC ----------------------------------------------------------------
    def _start_grpc(self) -> None:
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionServicer(self.repository), self._grpc
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            _ModelServicer(self.repository), self._grpc
        )
        self._grpc_port = self._grpc.add_insecure_port(f"{LOOPBACK}:{self._grpc_port}")
        self._grpc.start()


_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<tail>/metadata|:predict)?$"
)


class _RestHandler(BaseHTTPRequestHandler):
    repo: _Repository

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        self._handle(None)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self._handle(self.rfile.read(length))

    def _handle(self, body: bytes | None):
        try:
            match = _PATH.match(self.path)
            if not match:
                raise _Failure("NOT_FOUND", f"Malformed request: {self.command} {self.path}")
            name, tail = match["name"], match["tail"]
            version = int(match["version"]) if match["version"] else None
            if match["label"]:
                self.repo.get(name, version, match["label"])
            if tail == ":predict":
                if body is None:
                    raise _Failure("INVALID_ARGUMENT", "Malformed request: predict needs POST")
                answer = self._predict(name, version, body)
            elif tail == "/metadata":
                answer = self._metadata(name, version)
            else:
                answer = {"model_version_status": [
                    {"version": str(v), "state": state, "status": {"error_code": "OK", "error_message": ""}}
                    for v, state in self.repo.status(name, version)
                ]}
            self._send(200, answer)
        except _Failure as failure:
            self._send(HTTP_STATUS.get(failure.code, 500), {"error": failure.message})

    def _predict(self, name, version, body):
        try:
            request = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _Failure("INVALID_ARGUMENT", f"JSON Parse error: {err}") from None
        if not isinstance(request, dict) or ("instances" in request) == ("inputs" in request):
            raise _Failure("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key (exactly one of them)")
        signature = request.get("signature_name") or "serving_default"
        model = self.repo.get(name, version)
        spec = model.metadata().get(signature)
        if spec is None:
            raise _Failure("INVALID_ARGUMENT",
                           f"Serving signature name: \"{signature}\" not found in signature def")
        input_names = list(spec["inputs"])
        if "instances" in request:
            rows = request["instances"]
            if not isinstance(rows, list) or not rows:
                raise _Failure("INVALID_ARGUMENT", "'instances' must be a non-empty list")
            if all(isinstance(r, dict) and not set(r) <= {"b64"} for r in rows):
                columns = {k: [r.get(k) for r in rows] for k in rows[0]}
            elif len(input_names) == 1:
                columns = {input_names[0]: rows}
            else:
                raise _Failure("INVALID_ARGUMENT", "instances must be objects naming the inputs")
        else:
            columns = request["inputs"]
            if not isinstance(columns, dict):
                if len(input_names) != 1:
                    raise _Failure("INVALID_ARGUMENT", "'inputs' must be an object naming the inputs")
                columns = {input_names[0]: columns}
        inputs = {}
        for key, value in columns.items():
            dtype = spec["inputs"].get(key, {}).get("dtype")
            try:
                inputs[key] = from_json_value(value, dtype)
            except (ValueError, TypeError) as err:
                raise _Failure("INVALID_ARGUMENT", f"input {key!r}: {err}") from None
        _, outputs = self.repo.predict(name, version, signature, inputs)
        if "instances" in request:
            if len(outputs) == 1:
                name, value = next(iter(outputs.items()))
                return {"predictions": _output_json(name, value)}
            count = len(next(iter(outputs.values())))
            return {"predictions": [
                {k: _output_json(k, v[i]) for k, v in outputs.items()} for i in range(count)
            ]}
        if len(outputs) == 1:
            name, value = next(iter(outputs.items()))
            return {"outputs": _output_json(name, value)}
        return {"outputs": {k: _output_json(k, v) for k, v in outputs.items()}}

    def _metadata(self, name, version):
        from google.protobuf import json_format

        model = self.repo.get(name, version)
        defs = json_format.MessageToDict(model.signature_def_map(), preserving_proto_field_name=True)
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(model.version)},
            "metadata": {"signature_def": defs},
        }

    def _send(self, status: int, answer: dict):
        data = json.dumps(answer, default=_json_default).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _output_json(name: str, value: np.ndarray):
    # TF Serving writes string outputs as UTF-8 text, and as {"b64": ...}
    # only when the output's name ends in "_bytes".
    value = np.asarray(value)
    if value.dtype.kind in "SO" and not name.endswith("_bytes"):
        return np.vectorize(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v,
                            otypes=[object])(value).tolist()
    return to_json_value(value)


def _json_default(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")  # ids: TF Serving writes UTF-8 text
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _abort(context, failure: _Failure):
    import grpc

    context.abort(getattr(grpc.StatusCode, failure.code, grpc.StatusCode.UNKNOWN), failure.message)


def _spec(model_spec) -> tuple[str, int | None, str | None]:
    version = model_spec.version.value if model_spec.HasField("version") else None
    return model_spec.name, version, model_spec.version_label or None


def _make_servicers():
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def __init__(self, repository: _Repository):
            self.repo = repository

        def Predict(self, request, context):
            import tensorflow as tf
            from tensorflow_serving.apis import predict_pb2

            try:
                name, version, label = _spec(request.model_spec)
                self.repo.get(name, version, label)
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                served, outputs = self.repo.predict(name, version, request.model_spec.signature_name, inputs)
            except _Failure as failure:
                return _abort(context, failure)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = name
            response.model_spec.version.value = served
            response.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
            for key, value in outputs.items():
                if not request.output_filter or key in request.output_filter:
                    response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response

        def GetModelMetadata(self, request, context):
            from tensorflow_serving.apis import get_model_metadata_pb2

            try:
                name, version, label = _spec(request.model_spec)
                model = self.repo.get(name, version, label)
                if list(request.metadata_field) != ["signature_def"]:
                    raise _Failure("INVALID_ARGUMENT", "Metadata field signature_def is the only one supported")
            except _Failure as failure:
                return _abort(context, failure)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = name
            response.model_spec.version.value = model.version
            response.metadata["signature_def"].Pack(model.signature_def_map())
            return response

    class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
        def __init__(self, repository: _Repository):
            self.repo = repository

        def GetModelStatus(self, request, context):
            from tensorflow_serving.apis import get_model_status_pb2

            try:
                name, version, label = _spec(request.model_spec)
                self.repo.get(name, version, label)
                states = self.repo.status(name, version)
            except _Failure as failure:
                return _abort(context, failure)
            response = get_model_status_pb2.GetModelStatusResponse()
            for served, _ in states:
                status = response.model_version_status.add()
                status.version = served
                status.state = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE
            return response

    return PredictionServicer, ModelServicer


def _PredictionServicer(repository):
    return _make_servicers()[0](repository)


def _ModelServicer(repository):
    return _make_servicers()[1](repository)
