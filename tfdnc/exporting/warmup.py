"""TF Serving warm-up records: assets.extra/tf_serving_warmup_requests.

TF Serving replays these PredictionLog records when it loads a version, so
the first real request does not pay for graph optimisation and kernel
set-up. They need `tensorflow-serving-api` (the `serving` extra) to write.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf


def warmup_available() -> bool:
    try:
        import tensorflow_serving.apis.prediction_log_pb2  # noqa: F401
    except ImportError:
        return False
    return True


def write_warmup_requests(
    path: str | os.PathLike,
    model_name: str,
    requests: Sequence[tuple[str, Mapping[str, np.ndarray]]],
) -> int:
    """Writes one PredictLog per (signature, inputs); returns how many."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
    with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        for signature, inputs in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return len(requests)


def read_warmup_requests(path: str | os.PathLike) -> list:
    """The PredictionLog records of a warm-up file (for checks and tests)."""
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for record in tf.data.TFRecordDataset(os.fspath(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs
