"""TF Serving warm-up records: assets.extra/tf_serving_warmup_requests.

TF Serving replays these PredictionLog records when it loads a version, so
the first real request does not pay for graph optimisation and kernel
set-up. With server-side batching every allowed batch size is a shape of its
own, so a version is warmed up at each of them. The records need
`tensorflow-serving-api` (the `serving` extra) to write.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

import tensorflow as tf

# The allowed_batch_sizes of the deployment kit's export/batching_parameters.txt
# (tests/test_export_kit.py checks that the two agree).
DEFAULT_WARMUP_BATCH_SIZES = (1, 4, 16, 32, 64)
_ALLOWED = re.compile(r"^\s*allowed_batch_sizes\s*:\s*(\d+)\s*$")
_MAX = re.compile(r"^\s*max_batch_size\s*\{\s*value\s*:\s*(\d+)\s*\}\s*$")


def check_batch_sizes(sizes: Sequence[int], what: str = "warmup_batch_sizes") -> tuple[int, ...]:
    """Sorted distinct positive batch sizes; ValueError naming `what` otherwise."""
    try:
        values = sorted({int(s) for s in sizes})
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be positive integers, got {sizes!r}") from None
    if not values or values[0] < 1:
        raise ValueError(f"{what} must be one or more positive integers, got {list(sizes)!r}")
    return tuple(values)


def batching_batch_sizes(path: str | os.PathLike) -> tuple[int, ...]:
    """The batch sizes TF Serving runs under a BatchingParameters text file.

    Its `allowed_batch_sizes`, or (none listed) every size up to
    `max_batch_size` would be a shape of its own: then only 1 and the maximum.

    Examples:
        >>> batching_batch_sizes("export/batching_parameters.txt")
        (1, 4, 16, 32, 64)
    """
    path = os.fspath(path)
    try:
        with open(path) as f:
            lines = [line.split("#", 1)[0] for line in f]
    except OSError as exc:
        raise ValueError(f"cannot read batching parameters {path!r}: {exc}") from exc
    allowed = [int(m[1]) for m in map(_ALLOWED.match, lines) if m]
    if allowed:
        return check_batch_sizes(allowed, f"allowed_batch_sizes in {path!r}")
    largest = [int(m[1]) for m in map(_MAX.match, lines) if m]
    if not largest:
        raise ValueError(f"batching parameters {path!r} give neither allowed_batch_sizes "
                         "nor max_batch_size")
    return check_batch_sizes((1, largest[-1]), f"max_batch_size in {path!r}")


def warmup_available() -> bool:
    try:
        import tensorflow_serving.apis.prediction_log_pb2  # noqa: F401
    except ImportError:
        return False
    return True


def write_warmup_requests(
    path: str | os.PathLike,
    model_name: str,
    requests: Sequence[tuple[str, Mapping[str, object]]],
) -> int:
    """Writes one PredictLog per (signature, inputs); returns how many.

    An input is an array or a ready `TensorProto` (e.g. a compact one that
    holds a single value for a whole batch of pixels).
    """
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
    with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        for signature, inputs in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            for name, value in inputs.items():
                proto = value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
                request.inputs[name].CopyFrom(proto)
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
