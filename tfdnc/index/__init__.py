"""Gallery indexes for exported models: faiss in-process, or Milvus (Lite or a server).

Build an index of a gallery embedded by an export, save it beside the export
(versioned, never overwritten; writers take turns), add and remove images without rebuilding,
search with a per-request k, calibrate a match threshold, and measure what an
approximate index costs in Recall@K.

Examples:
    >>> from tfdnc.index import FaissIndex, SearchService, open_index, save_index
    >>> rng = np.random.default_rng(0)
    >>> embeddings = rng.normal(size=(50, 64)).astype("float32")
    >>> paths, labels = [f"gallery/{i}.jpg" for i in range(50)], np.arange(50) % 5
    >>> index = FaissIndex(dim=64)                     # or MilvusIndex(64, uri="gallery.db")
    >>> ids = index.add(embeddings, paths, labels)
    >>> path = save_index(index, export="exports/dnc/1")   # exports/dnc/1.index/<next version>
    >>> SearchService.open(path, rest="http://localhost:8501").search(["q.jpg"], k=5)  # doctest: +SKIP

Command line: `tfdnc index build | add | remove | search | info | calibrate | evaluate`
(`python -m tfdnc.index --help`).
"""

from __future__ import annotations

from tfdnc.utils.lazy import lazy_attributes

_LAZY = {
    "VectorIndex": "tfdnc.index.base",
    "FaissIndex": "tfdnc.index.faiss_index",
    "MilvusIndex": "tfdnc.index.milvus_index",
    "IndexHits": "tfdnc.index.hits",
    "IdMap": "tfdnc.index.idmap",
    "IndexMismatchError": "tfdnc.index.errors",
    "calibrate_threshold": "tfdnc.index.calibrate",
    "save_index": "tfdnc.index.store",
    "open_index": "tfdnc.index.store",
    "update_index": "tfdnc.index.store",
    "IndexLockedError": "tfdnc.index.lock",
    "resolve_export": "tfdnc.index.store",
    "SearchService": "tfdnc.index.service",
    "recall_through_index": "tfdnc.index.recall",
}

__all__ = sorted(_LAZY)


# Lazy, so `tfdnc index --help` and the REST path import neither faiss, pymilvus nor TensorFlow.
__getattr__ = lazy_attributes(__name__, _LAZY)
