"""An export run in-process, without a server, with TF Serving's request checks."""

from __future__ import annotations

import os
import re

import numpy as np

from tfdnc.exporting import contract
from tfdnc.exporting.versions import resolve_version_dir
from tfdnc.serving.client import ServingClient
from tfdnc.utils import read_json

# tf.errors codes -> gRPC status names (tf.errors.OpError.error_code values).
_TF_CODES = {
    1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION", 10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED",
    13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}


class ExportedModel(ServingClient):
    """Loads an exported SavedModel and answers like TF Serving would.

    Used by `tfdnc embed` / `tfdnc search` and by the in-process test server.
    Inputs are checked as TF Serving checks them (signature, names, dtypes,
    shapes), and graph errors become `ServingError`s with the server's codes.

    Args:
        path: a version folder (BASE/NAME/VERSION) or a model folder
            (BASE/NAME: its latest version).

    Examples:
        >>> model = ExportedModel("exports/dnc")
        >>> embeddings = model.embed(["a.jpg", "b.png"])
    """

    def __init__(self, path: str | os.PathLike, **kwargs):
        import tensorflow as tf

        self.path = resolve_version_dir(path)
        version_name = os.path.basename(os.path.normpath(self.path))
        model_name = os.path.basename(os.path.dirname(os.path.normpath(self.path))) or "model"
        super().__init__(kwargs.pop("model", model_name),
                         version=int(version_name) if version_name.isdigit() else None,
                         retries=kwargs.pop("retries", 0), **kwargs)
        self._loaded = tf.saved_model.load(self.path)
        self._signatures = dict(self._loaded.signatures)
        self._specs = {
            name: _describe(fn) for name, fn in self._signatures.items()
        }

    @property
    def signature_names(self) -> list[str]:
        return sorted(self._signatures)

    @property
    def export_metadata(self) -> dict:
        """assets.extra/tfdnc_export.json of the export ({} if absent)."""
        path = os.path.join(self.path, contract.ASSETS_EXTRA, contract.METADATA_FILE)
        return read_json(path, what="export metadata") if os.path.isfile(path) else {}

    def signature_def_map(self):
        """The SavedModel's SignatureDefs as TF Serving reports them (a proto)."""
        from tensorflow.core.protobuf import saved_model_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2

        saved = saved_model_pb2.SavedModel()
        with open(os.path.join(self.path, "saved_model.pb"), "rb") as f:
            saved.ParseFromString(f.read())
        defs = get_model_metadata_pb2.SignatureDefMap()
        for name, sig in saved.meta_graphs[0].signature_def.items():
            if not name.startswith("__"):
                defs.signature_def[name].CopyFrom(sig)
        return defs

    # --- transport -----------------------------------------------------------
    def _predict(self, inputs: dict[str, np.ndarray], signature: str) -> dict[str, np.ndarray]:
        import tensorflow as tf

        fn = self._signatures.get(signature)
        if fn is None:
            raise self._error(
                f"unknown signature {signature!r}; this export has {self.signature_names}",
                "INVALID_ARGUMENT", signature,
            )
        spec = self._specs[signature]["inputs"]
        missing = sorted(set(spec) - set(inputs))
        extra = sorted(set(inputs) - set(spec))
        if missing or extra:
            raise self._error(
                f"inputs do not match the signature: missing {missing}, unexpected {extra}; "
                f"expected {sorted(spec)}", "INVALID_ARGUMENT", signature,
            )
        tensors = {}
        for name, array in inputs.items():
            want = spec[name]
            tensors[name] = self._to_tensor(name, array, want, signature)
        try:
            outputs = fn(**tensors)
        except tf.errors.OpError as err:
            raise self._error(clean_tf_message(err.message), _TF_CODES.get(err.error_code, "UNKNOWN"),
                              signature) from None
        return {name: value.numpy() for name, value in outputs.items()}

    def _to_tensor(self, name, array, want, signature):
        import tensorflow as tf

        array = np.asarray(array)
        dtype = want["dtype"]
        if dtype == "string":
            ok = array.dtype.kind in "SO"
        else:
            ok = array.dtype == np.dtype(dtype)
        if not ok:
            raise self._error(
                f"input {name!r} must be {dtype}, got {array.dtype}", "INVALID_ARGUMENT", signature
            )
        shape = want["shape"]
        if shape is not None:
            fits = array.ndim == len(shape) and all(
                w == -1 or w == g for w, g in zip(shape, array.shape)
            )
            if not fits:
                raise self._error(
                    f"input {name!r} must have shape {_shape_text(shape)}, got {tuple(array.shape)}",
                    "INVALID_ARGUMENT", signature,
                )
        return tf.constant(array, dtype=tf.string if dtype == "string" else dtype)

    def _status(self) -> list[dict]:
        return [{"version": self.version, "state": "AVAILABLE", "error": ""}]

    def _metadata(self) -> dict:
        return {name: dict(spec) for name, spec in self._specs.items()}


def _describe(fn) -> dict:
    inputs = {
        name: {"dtype": spec.dtype.name, "shape": _dims(spec.shape)}
        for name, spec in fn.structured_input_signature[1].items()
    }
    outputs = {
        name: {"dtype": spec.dtype.name, "shape": _dims(spec.shape)}
        for name, spec in fn.structured_outputs.items()
    }
    return {"inputs": inputs, "outputs": outputs}


def _dims(shape) -> list[int] | None:
    if shape.rank is None:
        return None
    return [-1 if d is None else int(d) for d in shape.as_list()]


def _shape_text(shape) -> str:
    return "(" + ", ".join("batch" if i == 0 and d == -1 else ("any" if d == -1 else str(d))
                           for i, d in enumerate(shape)) + ")"


_NOISE = re.compile(r"^(Graph execution error:|Detected at node .*|<stack traces unavailable>)$")
_OP_SUFFIX = re.compile(r"\s*\[Op:__inference_[^\]]*\]\s*$")


def clean_tf_message(message: str) -> str:
    """Drops the Python-side framing of a TF runtime error, keeps its substance."""
    lines = [line for line in message.splitlines() if line.strip() and not _NOISE.match(line.strip())]
    return _OP_SUFFIX.sub("", " ".join(line.strip() for line in lines))
