"""TF Serving's gRPC API (port 8500) through `tensorflow-serving-api`."""

from __future__ import annotations

from typing import Any

import numpy as np

from tfdnc.serving.client import ServingClient
from tfdnc.serving.tensors import normalize_signature_defs

# Embedding batches of large images exceed gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class GrpcClient(ServingClient):
    """Embeds and searches through TF Serving's gRPC `PredictionService`.

    Args:
        target: "host:port" of the server's gRPC port, e.g. "localhost:8500".
        model, version, version_label, timeout, retries, backoff: see
            `ServingClient`.
        channel: an existing `grpc.Channel` to use instead of `target`.

    Examples:
        >>> client = GrpcClient("localhost:8500", model="dnc")  # doctest: +SKIP
        >>> embeddings = client.embed(["query.jpg"])  # doctest: +SKIP
        >>> client.status()  # [{'version': 1, 'state': 'AVAILABLE', 'error': ''}]  # doctest: +SKIP
    """

    def __init__(self, target: str = "localhost:8500", model: str = "dnc", *,
                 channel=None, **kwargs: Any):
        super().__init__(model, **kwargs)
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.target = target
        self._own_channel = channel is None
        self._channel = channel or grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        if self._own_channel:
            self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- transport -----------------------------------------------------------
    def _fill_spec(self, spec, signature: str | None = None) -> None:
        spec.name = self.model
        if self.version is not None:
            spec.version.value = self.version
        elif self.version_label is not None:
            spec.version_label = self.version_label
        if signature is not None:
            spec.signature_name = signature

    def _predict(self, inputs: dict[str, np.ndarray], signature: str) -> dict[str, np.ndarray]:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._fill_spec(request.model_spec, signature)
        for name, array in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
        response = self._call(self._predictions.Predict, request, signature)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def _status(self) -> list[dict]:
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._fill_spec(request.model_spec)
        response = self._call(self._models.GetModelStatus, request, None)
        state_names = get_model_status_pb2.ModelVersionStatus.State.Name
        return [
            {"version": int(s.version), "state": state_names(s.state), "error": s.status.error_message}
            for s in response.model_version_status
        ]

    def _metadata(self) -> dict:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._fill_spec(request.model_spec)
        request.metadata_field.append("signature_def")
        response = self._call(self._predictions.GetModelMetadata, request, None)
        defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(defs)
        as_dict = json_format.MessageToDict(defs, preserving_proto_field_name=True)
        return normalize_signature_defs(as_dict.get("signature_def", {}))

    def _call(self, method, request, signature):
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as err:
            code = err.code().name if err.code() is not None else "UNKNOWN"
            details = err.details() or str(err)
            if code == "DEADLINE_EXCEEDED":
                details = f"no answer from {self.target} within {self.timeout:g} s ({details})"
            elif code == "UNAVAILABLE":
                details = f"cannot reach {self.target}: {details}"
            raise self._error(details, code, signature) from None
