"""What every way of reaching an export shares: embed, search, status, metadata.

`RestClient`, `GrpcClient` (TF Serving) and `ExportedModel` (in-process)
implement `_predict`, `_status` and `_metadata`; this base class adds input
checks, batching, retries on UNAVAILABLE and result types.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from tfdnc.exporting import contract
from tfdnc.serving.errors import ServingError
from tfdnc.serving.images import ImageLike, as_image_list


@dataclass
class SearchResult:
    """Top-k gallery hits per query: each array is (queries, k)."""

    ids: np.ndarray
    similarities: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def concatenate(cls, outputs: list[Mapping[str, np.ndarray]], k: int | None = None) -> "SearchResult":
        """One result from the outputs of several `search` / `search_k` requests.

        Each is cut to its first `k` columns (a batching server can answer a
        `search_k` request with more: the largest k of its merged batch).
        Ids become `str` (gRPC and in-process answers give bytes, REST text).
        """
        columns = slice(None) if k is None else slice(0, int(k))

        def part(name, dtype):
            return np.concatenate([np.asarray(o[name])[:, columns] for o in outputs]).astype(dtype)

        ids = np.concatenate([np.asarray(o[contract.IDS])[:, columns] for o in outputs])
        if ids.dtype.kind in "OS":
            ids = np.vectorize(lambda v: v.decode("utf-8") if isinstance(v, bytes) else v,
                               otypes=[object])(ids)
        return cls(ids=ids, similarities=part(contract.SIMILARITIES, np.float32),
                   indices=part(contract.INDICES, np.int32))

    def to_records(self, query_ids: Iterable[str] | None = None) -> list[dict]:
        """One {"query", "rank", "id", "similarity", "index"} dict per hit."""
        query_ids = list(query_ids) if query_ids is not None else list(range(len(self.ids)))
        records = []
        for q, query in enumerate(query_ids):
            for rank in range(self.ids.shape[1]):
                hit = self.ids[q, rank]
                records.append({
                    "query": query,
                    "rank": rank + 1,
                    "id": hit.decode() if isinstance(hit, bytes) else hit.item() if hasattr(hit, "item") else hit,
                    "similarity": float(self.similarities[q, rank]),
                    "index": int(self.indices[q, rank]),
                })
        return records


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

    # --- embedding and search ------------------------------------------------
    def embed(
        self, images: ImageLike | Iterable[ImageLike], batch_size: int | None = None
    ) -> np.ndarray:
        """Encoded images (bytes or file paths) -> (N, d) L2-normalised embeddings."""
        return self._embed_bytes(images, contract.SERVING_DEFAULT, contract.EMBEDDINGS, batch_size)

    def embed_learners(
        self, images: ImageLike | Iterable[ImageLike], batch_size: int | None = None
    ) -> np.ndarray:
        """Encoded images -> (N, K, d) per-learner masked embeddings."""
        return self._embed_bytes(
            images, contract.EMBED_LEARNERS, contract.LEARNER_EMBEDDINGS, batch_size
        )

    def embed_pixels(self, pixels: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Float (N, H, W, C) images in [0, 255] -> (N, d) embeddings."""
        pixels = np.asarray(pixels, dtype=np.float32)
        if pixels.ndim != 4:
            raise ValueError(
                f"{self._where(contract.EMBED_PIXELS)}: `pixels` must be (batch, height, width, "
                f"channels), got shape {pixels.shape}"
            )
        return self._batched(
            pixels, batch_size,
            lambda chunk: self.predict({contract.PIXELS: chunk}, contract.EMBED_PIXELS)[contract.EMBEDDINGS],
        )

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
        contents = self._image_batch(images, contract.SEARCH)
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise ValueError(f"{self._where(contract.SEARCH)}: `k` must be an integer >= 1, got {k!r}")
        if k is None or not self.has_signature(contract.SEARCH_K):
            parts = [self.predict({contract.IMAGE_BYTES: chunk}, contract.SEARCH)
                     for chunk in _chunks(contents, batch_size)]
            width = parts[0][contract.IDS].shape[1]
            if k is not None and k > width:
                raise ValueError(
                    f"{self._where(contract.SEARCH)}: k={k} asked, but this export has no "
                    f"`{contract.SEARCH_K}` signature and its `search` returns {width} hits; "
                    "export it again for a per-request k"
                )
        else:
            parts = [
                self.predict({contract.IMAGE_BYTES: chunk, contract.K: np.full(len(chunk), k, np.int32)},
                             contract.SEARCH_K)
                for chunk in _chunks(contents, batch_size)
            ]
        return SearchResult.concatenate(parts, k)

    def has_signature(self, signature: str) -> bool:
        """Whether the served export has `signature` (asked once, then remembered)."""
        if self._signature_names is None:
            self._signature_names = frozenset(self.metadata())
        return signature in self._signature_names

    # --- helpers -------------------------------------------------------------
    def _embed_bytes(self, images, signature, output, batch_size) -> np.ndarray:
        contents = self._image_batch(images, signature)
        return self._batched(
            contents, batch_size,
            lambda chunk: self.predict({contract.IMAGE_BYTES: chunk}, signature)[output],
        ).astype(np.float32)

    def _image_batch(self, images, signature) -> np.ndarray:
        contents = as_image_list(images)
        if not contents:
            raise ValueError(f"{self._where(signature)}: no images given; send at least one")
        return np.array(contents, dtype=object)

    @staticmethod
    def _batched(array, batch_size, run) -> np.ndarray:
        return np.concatenate([np.asarray(run(chunk)) for chunk in _chunks(array, batch_size)])

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
