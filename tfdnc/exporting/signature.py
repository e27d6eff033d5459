"""What one export signature declares, and the registry every part iterates.

A `Signature` is the single home of one SignatureDef of a tfdnc export:

- its `name`, `inputs` and `outputs` (`TensorInfo`: name, dtype, shape),
- `function(graphs)`: the `tf.function` body, built from the serving
  graphs' building blocks (`tfdnc.exporting.signatures.ServingGraphs`),
- `available(graphs)`: whether an export includes it (e.g. only with a
  gallery),
- `warmup_inputs(graphs, batch_size)`: its TF Serving warm-up request,
- `metadata(graphs)` / `metadata_absent`: its fields of tfdnc_export.json,
- the client call: `client_input`, `check_call`, `request`, `response`
  (how `tfdnc.serving`'s clients build a request and read the answer).

The exporter, the warm-up writer, the metadata and the clients iterate the
registry (`tfdnc.exporting.endpoints.REGISTRY`, which holds the built-in
signatures); none of them branches on a signature's name.

This module imports no TensorFlow (the REST client uses it); the export-side
methods import it when called.

Examples:
    >>> class EmbeddingNorm(Signature):
    ...     name = "embedding_norm"
    ...     inputs = (TensorInfo("image_bytes", "string", ("B",)),)
    ...     outputs = (TensorInfo("norms", "float32", ("B",)),)
    ...     def function(self, graphs):
    ...         import tensorflow as tf
    ...         def embedding_norm(image_bytes):
    ...             embeddings = graphs.embed(graphs.decode(image_bytes, self.name))
    ...             return {"norms": tf.norm(embeddings, axis=1)}
    ...         return embedding_norm
    >>> from tfdnc.exporting.endpoints import register_signature
    >>> register_signature(EmbeddingNorm())  # every later export has it
    EmbeddingNorm(name='embedding_norm')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

# How a client call hands its data over: encoded images (bytes or file paths,
# read by the client) or a float (N, H, W, C) array of pixels.
CLIENT_INPUTS = ("images", "pixels")


@dataclass(frozen=True)
class TensorInfo:
    """One input or output tensor of a signature.

    Args:
        name: the tensor's key in the SignatureDef (and in requests).
        dtype: a TensorFlow dtype name ("string", "float32", "int32", ...).
        shape: one entry per dimension: an int, or a letter the serving
            graphs resolve for inputs ("B": the dynamic batch; "H", "W",
            "C": the model's image size and channels). Output letters only
            document ("d": embedding size, "K": learners, "k": top-k, ...).

    Examples:
        >>> TensorInfo("pixels", "float32", ("B", "H", "W", "C"))
        TensorInfo(name='pixels', dtype='float32', shape=('B', 'H', 'W', 'C'))
    """

    name: str
    dtype: str
    shape: tuple = ("B",)

    def describe(self) -> str:
        return f"{self.name}: {self.dtype} ({', '.join(map(str, self.shape))})"


class Signature:
    """Base class of an export signature; subclass it and `register_signature` an instance.

    Class attributes to set: `name`, `inputs`, `outputs`; optionally
    `client_input` ("images" or "pixels"), `metadata_absent` and `fallback`
    (the signature a client call uses instead when the served export lacks
    this one, e.g. an export from before it existed).

    Methods to implement: `function`. The others have defaults that fit a
    signature with image inputs and array outputs: override `available`,
    `warmup_inputs`, `metadata`, `check_call`, `request` and `response` as
    needed.
    """

    name: str = ""
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    client_input: str = "images"
    metadata_absent: Mapping[str, Any] = {}
    fallback: str | None = None

    def __init__(self):
        cls = type(self).__name__
        if not isinstance(self.name, str) or not self.name or self.name.startswith("_"):
            raise ValueError(f"{cls}: `name` must be a SignatureDef name (not empty, no leading '_'), "
                             f"got {self.name!r}")
        if not self.inputs or not self.outputs:
            raise ValueError(f"{cls}: declare at least one input and one output `TensorInfo`")
        if self.client_input not in CLIENT_INPUTS:
            raise ValueError(f"{cls}: `client_input` must be one of {CLIENT_INPUTS}, got {self.client_input!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # --- export side -----------------------------------------------------------
    def available(self, graphs) -> bool:
        """Whether an export built on `graphs` includes this signature."""
        return True

    def input_specs(self, graphs) -> list:
        """The `tf.TensorSpec`s of the inputs, their letters resolved by `graphs`."""
        import tensorflow as tf

        return [tf.TensorSpec(tuple(graphs.dimension(d) for d in info.shape), info.dtype, name=info.name)
                for info in self.inputs]

    def function(self, graphs) -> Callable:
        """The signature's body: takes the inputs (by name), returns {output name: tensor}."""
        raise NotImplementedError(f"{type(self).__name__} must implement `function(graphs)`")

    def warmup_inputs(self, graphs, batch_size: int) -> dict:
        """One warm-up request of `batch_size`: {input name: array or TensorProto}.

        The default sends mid-grey PNGs for string inputs, a single value
        for a whole batch of float inputs (a compact TensorProto: a 64-image
        batch of 224 x 224 pixels stays a few bytes instead of 38 MB) and
        ones for integer inputs.
        """
        import tensorflow as tf

        request = {}
        for info in self.inputs:
            shape = tuple(batch_size if d == "B" else graphs.dimension(d) for d in info.shape)
            if info.dtype == "string":
                request[info.name] = np.array([graphs.warmup_image()] * batch_size, dtype=object)
            elif info.dtype.startswith("float"):
                request[info.name] = tf.make_tensor_proto(128.0, info.dtype, shape)
            else:
                request[info.name] = np.ones(shape, info.dtype)
        return request

    def metadata(self, graphs) -> dict:
        """This signature's fields of tfdnc_export.json when exported (`metadata_absent` when not)."""
        return {}

    # --- client side ------------------------------------------------------------
    def check_call(self, where: str, **options: Any) -> None:
        """ValueError (starting with `where`) for options a client call may not take."""
        if options:
            raise ValueError(f"{where}: unexpected option(s) {sorted(options)}")

    def request(self, batch: np.ndarray, **options: Any) -> dict[str, np.ndarray]:
        """The inputs of one Predict request for one chunk of the caller's batch."""
        if len(self.inputs) != 1:
            raise NotImplementedError(f"{type(self).__name__} has several inputs: implement `request`")
        return {self.inputs[0].name: batch}

    def response(self, parts: Sequence[Mapping[str, np.ndarray]], where: str, **options: Any):
        """The call's result from the outputs of its requests (one per chunk).

        Default: the single output's rows concatenated, or {output: rows}.
        """
        joined = {info.name: np.concatenate([np.asarray(p[info.name]) for p in parts]) for info in self.outputs}
        return joined[self.outputs[0].name] if len(self.outputs) == 1 else joined

    @property
    def single_output(self) -> str | None:
        """The output's name when there is one (TF Serving's REST answers leave it out)."""
        return self.outputs[0].name if len(self.outputs) == 1 else None


class SignatureRegistry:
    """Signatures by name, in registration order: what an export includes and a client can `call`.

    tfdnc's one registry is `tfdnc.exporting.endpoints.REGISTRY` (the
    built-ins, registered on import); `register_signature` there adds yours.
    """

    def __init__(self, signatures: Sequence[Signature] = ()):
        self._signatures: dict[str, Signature] = {}
        for signature in signatures:
            self.register(signature)

    def register(self, signature: Signature, replace: bool = False) -> Signature:
        """Adds `signature`; registering a name twice is an error unless `replace`."""
        if not isinstance(signature, Signature):
            raise TypeError(f"register_signature: expected a Signature instance, got {type(signature).__name__}")
        if signature.name in self._signatures and not replace:
            raise ValueError(f"register_signature: a signature named {signature.name!r} is already registered "
                             f"({self._signatures[signature.name]!r}); pass replace=True to replace it")
        self._signatures[signature.name] = signature
        return signature

    def unregister(self, name: str) -> None:
        if name not in self._signatures:
            raise KeyError(f"unregister_signature: no signature named {name!r} is registered")
        del self._signatures[name]

    def all(self) -> tuple[Signature, ...]:
        return tuple(self._signatures.values())

    def get(self, name: str) -> Signature:
        """The signature called `name`; ValueError listing the known ones."""
        try:
            return self._signatures[name]
        except KeyError:
            raise ValueError(
                f"no export signature named {name!r} is registered; known: {sorted(self._signatures)}"
            ) from None

    def find(self, name: str) -> Signature | None:
        """The signature called `name`, or None (e.g. one another tool added to the SavedModel)."""
        return self._signatures.get(name)
