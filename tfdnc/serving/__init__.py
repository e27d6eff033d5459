"""Clients for exported tfdnc models: TF Serving over REST or gRPC, or in-process.

All three share one interface (`ServingClient`): `embed`, `embed_pixels`,
`embed_learners`, `search`, `call` (any registered signature), `predict`,
`status`, `metadata`; every failure is a `ServingError` naming the model,
version and signature.

Examples:
    >>> from tfdnc.serving import RestClient, GrpcClient, ExportedModel
    >>> RestClient("http://localhost:8501", model="dnc").embed(["query.jpg"])  # doctest: +SKIP
    >>> GrpcClient("localhost:8500", model="dnc").search(["query.jpg"]).to_records()  # doctest: +SKIP
    >>> ExportedModel("exports/dnc").embed(["query.jpg"]).shape  # no server
    (1, 64)
"""

from __future__ import annotations

from tfdnc.utils.lazy import lazy_attributes

_LAZY = {
    "ServingClient": "tfdnc.serving.client",
    "SearchResult": "tfdnc.exporting.endpoints",
    "ServingError": "tfdnc.serving.errors",
    "RestClient": "tfdnc.serving.rest",
    "GrpcClient": "tfdnc.serving.grpc_client",
    "ExportedModel": "tfdnc.serving.local",
    "list_images": "tfdnc.exporting.gallery",
}

__all__ = sorted(_LAZY)


# Lazy, so the REST client works without importing TensorFlow or gRPC.
__getattr__ = lazy_attributes(__name__, _LAZY)
