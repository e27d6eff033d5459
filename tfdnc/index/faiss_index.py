"""The embedded backend: a faiss index in this process, saved as one file.

Index types (`index_type`):

- "flat": exact inner-product search (`IndexFlatIP`), 4 * dim bytes a vector;
- "ivf_flat": inverted lists over k-means cells, full vectors, `nprobe`
  cells searched;
- "ivf_pq": inverted lists with product-quantised codes (`pq_m` bytes a
  vector): the least memory, approximate similarities;
- "hnsw": a graph (`IndexHNSWFlat`), full vectors plus the links;
- "auto": chosen from the size of the first batch added (the gallery at
  build time): "flat" below `FLAT_BELOW` vectors, else "hnsw", the type
  that reached recall@10 >= 0.95 at >= 10x exact search's speed on
  clustered data in bench/bench_index.py (IVF needed most of its cells
  probed for that recall there; see docs/bench/index.md).

IVF types are trained (k-means, PQ codebooks) on a sample of the first batch
added. Removal works in place for flat and IVF; faiss cannot remove from an
HNSW graph, so removed HNSW vectors become tombstones, filtered out of every
search by an id selector and reported by `info()` until the index is built
again.
"""

from __future__ import annotations

import math
import os

import numpy as np

from tfdnc.index.base import DEFAULT_MAX_K, VectorIndex
from tfdnc.index.hits import MISSING

INDEX_TYPES = ("auto", "flat", "ivf_flat", "ivf_pq", "hnsw")
FLAT_BELOW = 100_000
TRAIN_POINTS_PER_LIST = 64  # k-means sample per cell (faiss warns below 39)
MIN_POINTS_PER_LIST = 39
INDEX_FILE = "index.faiss"
TOMBSTONES_FILE = "tombstones.npy"


def default_nlist(n: int) -> int:
    """Inverted lists for n vectors: the power of two nearest sqrt(n), 1 to 65536."""
    return int(min(65536, max(1, 2 ** round(math.log2(max(1.0, math.sqrt(n)))))))


class FaissIndex(VectorIndex):
    """A faiss index with ids, paths and labels; cosine similarity.

    Args:
        dim: embedding dimension.
        index_type: one of `INDEX_TYPES` (see the module docstring).
        max_k, threshold: see `VectorIndex`.
        nlist: IVF cells (default: `default_nlist` of the first batch).
        nprobe: IVF cells searched per query (default: nlist / 32, >= 8).
        pq_m: IVF-PQ bytes per vector (default: dim / 4).
        hnsw_m, ef_construction, ef_search: HNSW graph degree and beam
            widths (ef_search is raised to k when k is larger).
        seed: sampling and k-means seed.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> vectors, queries = rng.normal(size=(100, 128)), rng.normal(size=(2, 128))
        >>> paths = [f"gallery/{i}.jpg" for i in range(100)]
        >>> index = FaissIndex(128, index_type="hnsw")
        >>> ids = index.add(vectors, paths)
        >>> [len(row) for row in index.search(queries, k=10).paths]
        [10, 10]
    """

    backend = "faiss"

    def __init__(self, dim: int, index_type: str = "auto", *, max_k: int = DEFAULT_MAX_K,
                 threshold: float | None = None, nlist: int | None = None, nprobe: int | None = None,
                 pq_m: int | None = None, hnsw_m: int = 32, ef_construction: int = 40,
                 ef_search: int = 128, seed: int = 0):
        super().__init__(dim, max_k=max_k, threshold=threshold)
        if index_type not in INDEX_TYPES:
            raise ValueError(f"FaissIndex: `index_type` must be one of {INDEX_TYPES}, got {index_type!r}")
        for name, value in (("nlist", nlist), ("nprobe", nprobe), ("pq_m", pq_m), ("hnsw_m", hnsw_m),
                            ("ef_construction", ef_construction), ("ef_search", ef_search)):
            if value is not None and int(value) < 1:
                raise ValueError(f"FaissIndex: `{name}` must be >= 1, got {value}")
        if pq_m is not None and dim % int(pq_m):
            raise ValueError(f"FaissIndex: `pq_m` ({pq_m}) must divide the dimension ({dim})")
        self.index_type = index_type
        self.nlist, self.nprobe = nlist, nprobe
        self.pq_m = pq_m
        self.hnsw_m, self.ef_construction, self.ef_search = int(hnsw_m), int(ef_construction), int(ef_search)
        self.seed = int(seed)
        self.index = None  # created (and trained) by the first add
        self.tombstones: set[int] = set()

    # --- creation ------------------------------------------------------------
    def _create(self, vectors: np.ndarray) -> None:
        import faiss

        n, d = vectors.shape
        kind = self.index_type
        if kind == "auto":
            kind = "flat" if n < FLAT_BELOW else "hnsw"
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        elif kind == "hnsw":
            graph = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = self.ef_construction
            index = faiss.IndexIDMap2(graph)
        else:
            index = self._trained_ivf(kind, vectors)
        self.index_type, self.index = kind, index

    def _trained_ivf(self, kind: str, vectors: np.ndarray):
        import faiss

        n, d = vectors.shape
        nlist = self.nlist or default_nlist(n)
        # Fewer cells when the first batch is small, so k-means has enough points per cell.
        nlist = max(1, min(nlist, n // MIN_POINTS_PER_LIST))
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf_flat":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            m = self.pq_m or _default_pq_m(d)
            if n < 256:
                raise ValueError(f"FaissIndex: ivf_pq needs at least 256 vectors in its first batch to "
                                 f"train its codebooks, got {n}; use index_type='flat' or 'hnsw'")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        quantizer.this.disown()
        rng = np.random.default_rng(self.seed)
        sample_size = min(n, max(TRAIN_POINTS_PER_LIST * nlist, 256 * 39 if kind == "ivf_pq" else 0))
        sample = vectors if sample_size >= n else vectors[np.sort(rng.choice(n, sample_size, replace=False))]
        index.cp.seed = self.seed
        index.train(sample)
        self.nlist = nlist
        self.nprobe = self.nprobe or max(8, nlist // 32)
        return index

    # --- backend -------------------------------------------------------------
    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self.index is None:
            self._create(vectors)
        self.index.add_with_ids(vectors, ids)

    def _remove(self, ids: np.ndarray) -> None:
        import faiss

        if self.index_type == "hnsw":
            # faiss cannot unlink a node from an HNSW graph: filter it out of searches.
            self.tombstones.update(int(i) for i in ids)
            return
        removed = self.index.remove_ids(faiss.IDSelectorBatch(ids))
        if removed != len(ids):
            raise RuntimeError(f"faiss removed {removed} of {len(ids)} ids; the index and its id map disagree")

    def _search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims, ids = self.index.search(vectors, k, params=self._search_params(k))
        return sims, np.where(ids < 0, MISSING, ids).astype(np.int64)

    def _search_params(self, k: int):
        import faiss

        selector = None
        if self.tombstones:
            self._selector_ids = np.fromiter(self.tombstones, np.int64)  # kept alive for faiss
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(self._selector_ids))
            self._selector = selector
        if self.index_type == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k), sel=selector)
        if self.index_type.startswith("ivf"):
            return faiss.SearchParametersIVF(nprobe=self.nprobe, sel=selector)
        return faiss.SearchParameters(sel=selector) if selector is not None else None

    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        if self.index_type == "ivf_pq":
            raise NotImplementedError("an ivf_pq index keeps compressed codes, not the vectors; "
                                      "pass the gallery embeddings instead")
        if self.index_type == "ivf_flat":
            import faiss

            self.index.make_direct_map(faiss.DirectMap.Hashtable)
        return np.stack([self.index.reconstruct(int(i)) for i in ids]).astype(np.float32)

    def settings(self) -> dict:
        out = {"backend": self.backend, "index_type": self.index_type}
        if self.index_type.startswith("ivf"):
            out.update(nlist=self.nlist, nprobe=self.nprobe)
        if self.index_type == "ivf_pq":
            out["pq_m"] = self.pq_m or _default_pq_m(self.dim)
        if self.index_type == "hnsw":
            out.update(hnsw_m=self.hnsw_m, ef_construction=self.ef_construction, ef_search=self.ef_search,
                       tombstones=len(self.tombstones))
        return out

    # --- files ---------------------------------------------------------------
    def write(self, folder: str) -> list[str]:
        """Writes the faiss index (and HNSW tombstones) into `folder`; returns the file names."""
        import faiss

        files = []
        if self.index is not None:
            faiss.write_index(self.index, os.path.join(folder, INDEX_FILE))
            files.append(INDEX_FILE)
        if self.tombstones:
            np.save(os.path.join(folder, TOMBSTONES_FILE), np.fromiter(sorted(self.tombstones), np.int64))
            files.append(TOMBSTONES_FILE)
        return files

    @classmethod
    def read(cls, folder: str, metadata: dict) -> "FaissIndex":
        """The index saved in `folder` by `write`, with `metadata`'s settings."""
        import faiss

        settings = metadata["settings"]
        index = cls(metadata["dim"], settings["index_type"], max_k=metadata["max_k"],
                    nlist=settings.get("nlist"), nprobe=settings.get("nprobe"), pq_m=settings.get("pq_m"),
                    hnsw_m=settings.get("hnsw_m", 32), ef_construction=settings.get("ef_construction", 40),
                    ef_search=settings.get("ef_search", 128))
        path = os.path.join(folder, INDEX_FILE)
        if os.path.exists(path):
            try:
                index.index = faiss.read_index(path)
            except RuntimeError as exc:
                raise ValueError(f"cannot read faiss index {path!r}: {str(exc).splitlines()[0]}") from None
            if index.index.d != index.dim:
                raise ValueError(f"faiss index {path!r} has dimension {index.index.d}, its metadata says {index.dim}")
        tombstones = os.path.join(folder, TOMBSTONES_FILE)
        if os.path.exists(tombstones):
            index.tombstones = set(int(i) for i in np.load(tombstones, allow_pickle=False))
        return index


def _default_pq_m(dim: int) -> int:
    """dim / 4 sub-quantisers (4 dims per byte), the largest divisor of dim not above it."""
    target = max(1, dim // 4)
    return max(m for m in range(1, target + 1) if dim % m == 0)
