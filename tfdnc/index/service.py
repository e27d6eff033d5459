"""The serving path: TF Serving (or the export in-process) embeds, the index searches."""

from __future__ import annotations

from typing import Sequence

from tfdnc.index.base import VectorIndex
from tfdnc.index.errors import IndexMismatchError
from tfdnc.index.hits import IndexHits
from tfdnc.index.sources import embed_images


class SearchService:
    """Searches an index with image files, embedding them through a serving client.

    Args:
        index: an open `VectorIndex`.
        embedder: a `tfdnc.serving` client: `RestClient` / `GrpcClient` (TF
            Serving) or `ExportedModel` (in-process).
        batch_size: images per embedding request.

    Examples:
        >>> service = SearchService.open("exports/dnc/1", rest="http://localhost:8501")  # doctest: +SKIP
        >>> service.search(["query.jpg"], k=5).to_records(["query.jpg"])  # doctest: +SKIP
    """

    def __init__(self, index: VectorIndex, embedder, *, batch_size: int = 32):
        self.index = index
        self.embedder = embedder
        self.batch_size = int(batch_size)

    @classmethod
    def open(cls, index_path: str, *, export: str | None = None, rest: str | None = None,
             grpc: str | None = None, model: str | None = None, version: int | None = None,
             batch_size: int = 32, **client_options) -> "SearchService":
        """Opens a saved index and the model it was built with.

        With `rest` (e.g. "http://localhost:8501") or `grpc` ("localhost:8500")
        the images are embedded by TF Serving, asking for the model name and
        version the index records (so the server embeds with the very model
        the gallery was embedded with) unless `model` / `version` are given.
        Otherwise `export` (default: the export the index records) is run
        in-process, after checking it is the one the index was built from.
        """
        from tfdnc.index.store import open_index

        if rest and grpc:
            raise ValueError("SearchService.open: give `rest` or `grpc`, not both")
        index = open_index(index_path, export=export if not (rest or grpc) else None)
        built_from = getattr(index, "export_info", None) or {}
        if rest or grpc:
            name = model or built_from.get("model")
            if not name:
                raise ValueError("SearchService.open: the index records no model name; give `model`")
            pinned = version if version is not None else built_from.get("version")
            if rest:
                from tfdnc.serving.rest import RestClient

                embedder = RestClient(rest, model=name, version=pinned, **client_options)
            else:
                from tfdnc.serving.grpc_client import GrpcClient

                embedder = GrpcClient(grpc, model=name, version=pinned, **client_options)
        else:
            from tfdnc.index.sources import load_exported_model
            from tfdnc.index.store import check_export, read_metadata

            local = export or built_from.get("path")
            if not local:
                raise ValueError("SearchService.open: the index records no export; give `export`")
            if export is None:  # the recorded export may have been replaced since
                check_export(read_metadata(index.saved_path), index.saved_path, local)
            embedder = load_exported_model(local)
        return cls(index, embedder, batch_size=batch_size)

    def embed(self, images: Sequence[str]):
        """(N, d) embeddings of image files; a bad image is named in the error."""
        embeddings = embed_images(self.embedder, list(images), self.batch_size)
        if embeddings.shape[1] != self.index.dim:
            raise IndexMismatchError(f"the model embeds into {embeddings.shape[1]} dimensions, the index "
                                     f"holds {self.index.dim}-dimensional embeddings (another model's index?)")
        return embeddings

    def search(self, images: Sequence[str], k: int = 10) -> IndexHits:
        """Top-k hits of each image file (k up to the index's `max_k`)."""
        self.index.check_k(k)  # before embedding: a bad k costs no model call
        return self.index.search(self.embed(images), k)

    def search_records(self, images: Sequence[str], k: int = 10, *,
                       include_unmatched: bool = False) -> list[dict]:
        """`search` as records, one per hit ("no match" records below the threshold)."""
        return self.search(images, k).to_records(list(images), include_unmatched=include_unmatched)
