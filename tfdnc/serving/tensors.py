"""Converting request and response tensors: NumPy <-> TF Serving JSON.

The REST API writes binary strings as {"b64": "..."} objects and numbers as
nested lists; this module needs no TensorFlow.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np


def to_json_value(value: np.ndarray) -> Any:
    """An array -> nested lists; bytes elements -> {"b64": ...} objects."""
    if isinstance(value, (bytes, bytearray)):
        # Not via np.asarray: fixed-width NumPy bytes drop trailing NULs.
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    array = np.asarray(value)
    if array.dtype.kind in "SO":
        flat = [{"b64": base64.b64encode(_as_bytes(v)).decode("ascii")} for v in array.reshape(-1)]
        return _nest(flat, array.shape)
    if array.dtype.kind == "U":
        return array.tolist()
    return array.tolist()


def from_json_value(value: Any, dtype: str | None = None) -> np.ndarray:
    """Nested lists (with {"b64": ...} leaves) -> array; `dtype` e.g. "float32"."""
    decoded = _decode_b64(value)
    if dtype == "string":
        array = np.array(decoded, dtype=object)
        return np.vectorize(_as_bytes, otypes=[object])(array) if array.size else array
    array = np.asarray(decoded)
    if dtype is not None:
        array = array.astype(dtype)
    elif array.dtype == np.float64:
        array = array.astype(np.float32)  # TF Serving outputs are float32 here
    return array


def normalize_signature_defs(signature_defs: dict) -> dict:
    """SignatureDefMap JSON (REST metadata, MessageToDict) -> {sig: {inputs, outputs}}.

    Each tensor becomes {"dtype": "float32"|"string"|..., "shape": [-1, ...]}
    (None for an unknown rank).
    """
    described = {}
    for name, sig in signature_defs.items():
        if name.startswith("__"):
            continue  # __saved_model_init_op is not a serving signature
        described[name] = {
            part: {tensor: _tensor_info(info) for tensor, info in sig.get(part, {}).items()}
            for part in ("inputs", "outputs")
        }
    return described


_DTYPES = {
    "DT_FLOAT": "float32",
    "DT_DOUBLE": "float64",
    "DT_HALF": "float16",
    "DT_BFLOAT16": "bfloat16",
    "DT_STRING": "string",
    "DT_BOOL": "bool",
}


def dtype_name(tf_enum_name: str) -> str:
    """"DT_FLOAT" -> "float32", "DT_INT64" -> "int64", "DT_STRING" -> "string"."""
    return _DTYPES.get(tf_enum_name, tf_enum_name.replace("DT_", "").lower())


def _tensor_info(info: dict) -> dict:
    shape_proto = info.get("tensor_shape", info.get("tensorShape", {}))
    if shape_proto.get("unknown_rank", shape_proto.get("unknownRank", False)):
        shape = None
    else:
        shape = [int(d.get("size", -1)) for d in shape_proto.get("dim", [])]
    return {"dtype": dtype_name(info.get("dtype", "DT_INVALID")), "shape": shape}


def _as_bytes(value) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"expected bytes or str, got {type(value).__name__}")


def _nest(flat: list, shape: tuple) -> Any:
    if not shape:
        return flat[0]
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def _decode_b64(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        return {k: _decode_b64(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    return value
