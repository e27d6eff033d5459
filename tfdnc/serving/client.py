"""What every way of reaching an export shares: embed, search, status, metadata.

`RestClient`, `GrpcClient` (TF Serving) and `ExportedModel` (in-process)
implement `_predict`, `_status` and `_metadata`; this base class adds input
checks, batching, retries on UNAVAILABLE and result types. A call of a
signature (`call`, and `embed`, `search`, ... that name one) is built and
read by the signature's own declaration (`tfdnc.exporting.endpoints`).
"""

from __future__ import annotations

import abc
import time
from typing import Any, Iterable, Mapping

import numpy as np

from tfdnc.exporting import contract
from tfdnc.exporting.endpoints import SearchResult, get_signature
from tfdnc.serving.errors import ServingError
from tfdnc.serving.images import ImageLike, as_image_list


class ServingClient(abc.ABC):
    """Base of the clients; see `RestClient`, `GrpcClient`, `ExportedModel`.

    Args:
        model: the model name on the server.
        version: a specific integer version (None: the latest it serves).
        version_label: a TF Serving version label ("stable") instead.
        timeout: seconds per request.
        retries: extra attempts when the server is UNAVAILABLE (loading,
            restarting, overloaded); other errors are raised at once.
        backoff: seconds before the first retry, doubled each time.
    """

    def __init__(
        self,
        model: str,
        version: int | None = None,
        version_label: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.25,
    ):
        if not model:
            raise ValueError(f"{type(self).__name__}: `model` must be a model name, got {model!r}")
        if version is not None and version_label is not None:
            raise ValueError(f"{type(self).__name__}: give `version` or `version_label`, not both")
        if timeout <= 0:
            raise ValueError(f"{type(self).__name__}: `timeout` must be > 0, got {timeout}")
        if retries < 0 or backoff < 0:
            raise ValueError(f"{type(self).__name__}: `retries` and `backoff` must be >= 0")
        self.model = model
        self.version = int(version) if version is not None else None
        self.version_label = version_label
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self._signature_names: frozenset[str] | None = None

    # --- transport (subclasses) ----------------------------------------------
    @abc.abstractmethod
    def _predict(self, inputs: dict[str, np.ndarray], signature: str) -> dict[str, np.ndarray]:
        """One Predict call; raises ServingError."""

    @abc.abstractmethod
    def _status(self) -> list[dict]:
        """[{"version": int, "state": str, "error": str}]."""

    @abc.abstractmethod
    def _metadata(self) -> dict:
        """{signature: {"inputs"/"outputs": {tensor: {"dtype", "shape"}}}}."""

    # --- generic calls -------------------------------------------------------
    def predict(
        self, inputs: Mapping[str, Any], signature: str = contract.SERVING_DEFAULT
    ) -> dict[str, np.ndarray]:
        """Runs `signature` on named input arrays; returns its named outputs."""
        if not isinstance(inputs, Mapping) or not inputs:
            raise ValueError(
                f"{self._where(signature)}: `inputs` must be a non-empty dict of tensor name -> array"
            )
        arrays = {}
        for name, value in inputs.items():
            array = _as_array(value)
            if array.ndim == 0 or array.shape[0] == 0:
                raise ValueError(
                    f"{self._where(signature)}: input {name!r} is an empty batch or a scalar "
                    f"(shape {array.shape}); send a batch of at least one"
                )
            arrays[name] = array
        return self._with_retries(lambda: self._predict(arrays, signature))

    def status(self) -> list[dict]:
        """The server's versions of the model and their states."""
        return self._with_retries(self._status)

    def metadata(self) -> dict:
        """Signatures with input/output names, dtypes and shapes."""
        return self._with_retries(self._metadata)

    # --- signature calls -----------------------------------------------------
    def call(self, signature: str, data, batch_size: int | None = None, **options: Any):
        """Runs a registered signature on `data`; returns what its declaration makes of the answer.

        `data`: encoded images (bytes or file paths) or a float (N, H, W, C)
        pixel array, as the signature's `client_input` says; sent in requests
        of `batch_size` (None: one request). `options` go to the signature
        (e.g. `k` for `search_k`). A signature the served export lacks is
        replaced by its `fallback`, if it declares one.

        Examples:
            >>> client.call("class_votes", ["query.jpg"])  # one you registered (docs/examples/own_signature.py)  # doctest: +SKIP
        """
        declared = get_signature(signature)
        batch = self._client_batch(declared, data)
        declared.check_call(self._where(declared.name), **options)
        if declared.fallback is not None and not self.has_signature(declared.name):
            declared = get_signature(declared.fallback)
        parts = [self.predict(declared.request(chunk, **options), declared.name)
                 for chunk in _chunks(batch, batch_size)]
        return declared.response(parts, self._where(declared.name), **options)

    def embed(
        self, images: ImageLike | Iterable[ImageLike], batch_size: int | None = None
    ) -> np.ndarray:
        """Encoded images (bytes or file paths) -> (N, d) L2-normalised embeddings."""
        return self.call(contract.SERVING_DEFAULT, images, batch_size).astype(np.float32)

    def embed_learners(
        self, images: ImageLike | Iterable[ImageLike], batch_size: int | None = None
    ) -> np.ndarray:
        """Encoded images -> (N, K, d) per-learner masked embeddings."""
        return self.call(contract.EMBED_LEARNERS, images, batch_size).astype(np.float32)

    def embed_pixels(self, pixels: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Float (N, H, W, C) images in [0, 255] -> (N, d) embeddings."""
        return self.call(contract.EMBED_PIXELS, pixels, batch_size)

    def search(
        self,
        images: ImageLike | Iterable[ImageLike],
        batch_size: int | None = None,
        k: int | None = None,
    ) -> SearchResult:
        """Encoded query images -> top-k ids and similarities of the export's gallery.

        Args:
            images: encoded images (bytes) or file paths.
            batch_size: images per request (None: one request).
            k: hits per query. None: the export's `top_k` (the `search`
                signature). Else the `search_k` signature answers up to the
                export's `max_k` (more: a ServingError INVALID_ARGUMENT); an
                export made before `search_k` existed answers up to its
                `top_k` (more: ValueError).
        """
        if k is None:
            return self.call(contract.SEARCH, images, batch_size)
        return self.call(contract.SEARCH_K, images, batch_size, k=k)

    def has_signature(self, signature: str) -> bool:
        """Whether the served export has `signature` (asked once, then remembered)."""
        if self._signature_names is None:
            self._signature_names = frozenset(self.metadata())
        return signature in self._signature_names

    # --- helpers -------------------------------------------------------------
    def _client_batch(self, signature, data) -> np.ndarray:
        """The caller's data as one array: encoded images read and checked, or float32 pixels."""
        if signature.client_input == "pixels":
            pixels = np.asarray(data, dtype=np.float32)
            if pixels.ndim != 4:
                raise ValueError(
                    f"{self._where(signature.name)}: `{signature.inputs[0].name}` must be (batch, height, "
                    f"width, channels), got shape {pixels.shape}"
                )
            return pixels
        contents = as_image_list(data)
        if not contents:
            raise ValueError(f"{self._where(signature.name)}: no images given; send at least one")
        return np.array(contents, dtype=object)

    def _with_retries(self, call):
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return call()
            except ServingError as err:
                if err.code != "UNAVAILABLE" or attempt == self.retries:
                    raise
            time.sleep(delay)
            delay *= 2

    def _where(self, signature: str | None = None) -> str:
        where = f"{type(self).__name__}: model {self.model!r}"
        where += f", version {self._version_name()}"
        return where + (f", signature {signature!r}" if signature else "")

    def _version_name(self):
        if self.version is not None:
            return self.version
        return f"label {self.version_label!r}" if self.version_label else "latest"

    def _error(self, details: str, code: str, signature: str | None = None) -> ServingError:
        version = self.version if self.version is not None else (
            f"label {self.version_label!r}" if self.version_label else None
        )
        return ServingError(details, model=self.model, version=version, signature=signature, code=code)


def _as_array(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    array = np.asarray(value)
    if array.dtype.kind in "SU":
        # NumPy's fixed-width bytes drop trailing NULs, which would corrupt
        # encoded images; keep the Python objects as they are.
        array = np.array(value, dtype=object)
    return array


def _chunks(array, batch_size):
    if batch_size is None:
        yield array
        return
    if int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    for start in range(0, len(array), int(batch_size)):
        yield array[start : start + int(batch_size)]
