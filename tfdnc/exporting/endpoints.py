"""The built-in signatures of a tfdnc export, one class each, and the registry.

Batch size B is always dynamic; H, W, C the model's input size, d the
embedding size, K the number of active learners, k the export's top-k, m the
largest `k` asked for in the batch:

=================  ============================  ==========================================
signature          inputs                        outputs
=================  ============================  ==========================================
serving_default    image_bytes: string (B,)      embeddings: float32 (B, d)
embed_pixels       pixels: float32 (B, H, W, C)  embeddings: float32 (B, d)
embed_learners     image_bytes: string (B,)      learner_embeddings: float32 (B, K, d)
search             image_bytes: string (B,)      ids: string|int64 (B, k),
                                                 similarities: float32 (B, k),
                                                 indices: int32 (B, k)
search_k           image_bytes: string (B,),     ids, similarities, indices: (B, m)
                   k: int32 (B,)
=================  ============================  ==========================================

Each class below declares everything about its signature (see
`tfdnc.exporting.signature.Signature`); the exporter, the warm-up writer,
the export metadata and the clients (`tfdnc.serving`) iterate `REGISTRY`.
Add your own with `register_signature` (docs/examples/own_signature.py).

This module imports no TensorFlow: the REST client reads the declarations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from tfdnc.exporting import contract
from tfdnc.exporting.signature import Signature, SignatureRegistry, TensorInfo

IMAGES = TensorInfo(contract.IMAGE_BYTES, "string", ("B",))
EMBEDDINGS = TensorInfo(contract.EMBEDDINGS, "float32", ("B", "d"))
HITS = (
    TensorInfo(contract.IDS, "string|int64", ("B", "k")),
    TensorInfo(contract.SIMILARITIES, "float32", ("B", "k")),
    TensorInfo(contract.INDICES, "int32", ("B", "k")),
)


class ServingDefault(Signature):
    """Encoded images (JPEG, PNG, GIF, BMP, WebP) -> L2-normalised embeddings.

    Decoding, the evaluation resize + centre crop and the model all run in
    the graph.
    """

    name = contract.SERVING_DEFAULT
    inputs = (IMAGES,)
    outputs = (EMBEDDINGS,)

    def function(self, graphs):
        def serving_default(image_bytes):
            return {contract.EMBEDDINGS: graphs.embed(graphs.decode(image_bytes, self.name))}

        return serving_default


class EmbedPixels(Signature):
    """Float pixels in [0, 255], already at the model's size -> embeddings."""

    name = contract.EMBED_PIXELS
    inputs = (TensorInfo(contract.PIXELS, "float32", ("B", "H", "W", "C")),)
    outputs = (EMBEDDINGS,)
    client_input = "pixels"

    def function(self, graphs):
        def embed_pixels(pixels):
            return {contract.EMBEDDINGS: graphs.embed(graphs.check_pixels(pixels, self.name))}

        return embed_pixels


class EmbedLearners(Signature):
    """Encoded images -> the K active learners' masked embeddings (a D&C model only)."""

    name = contract.EMBED_LEARNERS
    inputs = (IMAGES,)
    outputs = (TensorInfo(contract.LEARNER_EMBEDDINGS, "float32", ("B", "K", "d")),)
    metadata_absent = {"num_learners": None}

    def available(self, graphs) -> bool:
        return graphs.has_learners

    def function(self, graphs):
        def embed_learners(image_bytes):
            pixels = graphs.decode(image_bytes, self.name)
            return {contract.LEARNER_EMBEDDINGS: graphs.learner_embeddings(pixels)}

        return embed_learners

    def metadata(self, graphs) -> dict:
        return {"num_learners": graphs.num_learners}


@dataclass
class SearchResult:
    """Top-k gallery hits per query, as a client's `search` returns them: each array is (queries, k)."""

    ids: np.ndarray
    similarities: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def concatenate(cls, outputs: Sequence[Mapping[str, np.ndarray]], k: int | None = None) -> "SearchResult":
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


def _check_k(where: str, k: Any, required: bool) -> None:
    if k is None and not required:
        return
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{where}: `k` must be an integer >= 1, got {k!r}")


class Search(Signature):
    """Encoded query images -> the export's top_k gallery hits: ids, cosine similarities, rows.

    Only in an export with a gallery. A client call may pass `k` up to the
    export's top_k (the answer is cut to it): what a `search_k` call falls
    back to on an export from before `search_k`.
    """

    name = contract.SEARCH
    inputs = (IMAGES,)
    outputs = HITS
    metadata_absent = {"gallery_size": 0, "top_k": None}

    def available(self, graphs) -> bool:
        return graphs.gallery is not None

    def function(self, graphs):
        def search(image_bytes):
            queries = graphs.embed(graphs.decode(image_bytes, self.name))
            return graphs.gallery.top_hits(queries, graphs.gallery.top_k)

        return search

    def metadata(self, graphs) -> dict:
        return {"gallery_size": graphs.gallery.size, "top_k": graphs.gallery.top_k}

    def check_call(self, where: str, k: int | None = None) -> None:
        _check_k(where, k, required=False)

    def request(self, batch: np.ndarray, k: int | None = None) -> dict[str, np.ndarray]:
        return {contract.IMAGE_BYTES: batch}

    def response(self, parts, where: str, k: int | None = None) -> SearchResult:
        width = np.asarray(parts[0][contract.IDS]).shape[1]
        if k is not None and k > width:
            raise ValueError(
                f"{where}: k={k} asked, but this export has no `{contract.SEARCH_K}` signature and its "
                f"`search` returns {width} hits; export it again for a per-request k"
            )
        return SearchResult.concatenate(parts, k)


class SearchK(Signature):
    """`search` with a per-request k: one value per query image, each in 1..max_k.

    max_k is fixed at export; larger values fail the request with
    INVALID_ARGUMENT, they are not clipped. Every row gets the top m hits, m
    the largest k of the batch, best first, so a row's own top k are its
    first k columns; the clients cut each request back to its k. It is a
    signature of its own, not an optional input of `search`, because TF
    Serving's server-side batching needs every input to carry the batch
    dimension: an optional `k` with a fixed default could not be batched
    with B > 1 images, and old clients of `search` keep working unchanged.
    """

    name = contract.SEARCH_K
    inputs = (IMAGES, TensorInfo(contract.K, "int32", ("B",)))
    outputs = tuple(TensorInfo(info.name, info.dtype, ("B", "m")) for info in HITS)
    metadata_absent = {"max_k": None}
    fallback = contract.SEARCH  # an export from before search_k: `search`, cut to k

    def available(self, graphs) -> bool:
        return graphs.gallery is not None

    def function(self, graphs):
        import tensorflow as tf

        def search_k(image_bytes, k):
            k = graphs.gallery.check_k(k, tf.shape(image_bytes)[0], self.name)
            queries = graphs.embed(graphs.decode(image_bytes, self.name))
            return graphs.gallery.top_hits(queries, tf.reduce_max(k))

        return search_k

    def warmup_inputs(self, graphs, batch_size: int) -> dict:
        # k = max_k: the widest answer the export gives.
        return {**super().warmup_inputs(graphs, batch_size),
                contract.K: np.full(batch_size, graphs.gallery.max_k, np.int32)}

    def metadata(self, graphs) -> dict:
        return {"max_k": graphs.gallery.max_k}

    def check_call(self, where: str, k: int | None = None) -> None:
        _check_k(where, k, required=True)

    def request(self, batch: np.ndarray, k: int | None = None) -> dict[str, np.ndarray]:
        return {contract.IMAGE_BYTES: batch, contract.K: np.full(len(batch), k, np.int32)}

    def response(self, parts, where: str, k: int | None = None) -> SearchResult:
        return SearchResult.concatenate(parts, k)


REGISTRY = SignatureRegistry([ServingDefault(), EmbedPixels(), EmbedLearners(), Search(), SearchK()])
register_signature = REGISTRY.register
unregister_signature = REGISTRY.unregister
registered_signatures = REGISTRY.all
get_signature = REGISTRY.get
find_signature = REGISTRY.find
