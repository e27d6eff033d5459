"""The scale-out backend: a Milvus collection through pymilvus.

`uri` is a Milvus Lite database (a local path ending in ".db": embedded,
one machine, what the tests use) or a Milvus server / cluster address
("http://host:19530"). The same tfdnc calls work on both; index types map to
Milvus's: "flat" -> FLAT, "ivf_flat" -> IVF_FLAT, "hnsw" -> HNSW, and
"auto" -> FLAT below `FLAT_BELOW` vectors in the first batch, HNSW above.

Saving: a Milvus Lite database is copied into the index version folder (so a
saved version never changes); opening a saved version works on a copy of it.
A server collection lives on the server: a saved version records its address
and collection name, and later changes to the collection are not versioned.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from tfdnc.index.base import DEFAULT_MAX_K, VectorIndex
from tfdnc.index.faiss_index import FLAT_BELOW, default_nlist
from tfdnc.index.hits import MISSING

INDEX_TYPES = ("auto", "flat", "ivf_flat", "hnsw")
_MILVUS_TYPES = {"flat": "FLAT", "ivf_flat": "IVF_FLAT", "hnsw": "HNSW"}
DB_NAME = "milvus.db"
ID_FIELD, VECTOR_FIELD = "id", "embedding"
INSERT_BATCH = 10_000


def is_lite_uri(uri: str) -> bool:
    """Whether `uri` names a Milvus Lite database (a local path) rather than a server."""
    return not uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))


class MilvusIndex(VectorIndex):
    """A Milvus collection with ids, paths and labels; cosine similarity.

    Args:
        dim: embedding dimension.
        uri: Milvus Lite file ("gallery.db") or server URL; default: a new
            Milvus Lite database in a temporary folder.
        collection: collection name.
        index_type: one of `INDEX_TYPES`.
        token: server credentials ("user:password" or an API key), if any.
        max_k, threshold: see `VectorIndex`.
        nlist, nprobe, hnsw_m, ef_construction, ef_search: as for
            `FaissIndex`.

    Example:
    >>> index = MilvusIndex(128, uri="gallery.db")            # Milvus Lite
    >>> index = MilvusIndex(128, uri="http://milvus:19530")   # a server
    >>> index.add(vectors, paths); index.search(queries, k=5)
    """

    backend = "milvus"

    def __init__(self, dim: int, uri: str | None = None, collection: str = "tfdnc_gallery",
                 index_type: str = "auto", *, token: str | None = None, max_k: int = DEFAULT_MAX_K,
                 threshold: float | None = None, nlist: int | None = None, nprobe: int | None = None,
                 hnsw_m: int = 32, ef_construction: int = 40, ef_search: int = 128):
        super().__init__(dim, max_k=max_k, threshold=threshold)
        if index_type not in INDEX_TYPES:
            raise ValueError(f"MilvusIndex: `index_type` must be one of {INDEX_TYPES}, got {index_type!r}")
        if not collection or not collection.replace("_", "a").isalnum():
            raise ValueError(f"MilvusIndex: `collection` must be letters, digits and _, got {collection!r}")
        self._workdir = None
        if uri is None:
            self._workdir = tempfile.mkdtemp(prefix="tfdnc-milvus-")
            uri = os.path.join(self._workdir, DB_NAME)
        self.uri, self.collection, self.token = os.fspath(uri), collection, token
        self.index_type = index_type
        self.nlist, self.nprobe = nlist, nprobe
        self.hnsw_m, self.ef_construction, self.ef_search = int(hnsw_m), int(ef_construction), int(ef_search)
        self._client = None
        self._ready = False  # the collection exists (created by the first add)

    @property
    def lite(self) -> bool:
        return is_lite_uri(self.uri)

    @property
    def client(self):
        if self._client is None:
            from pymilvus import MilvusClient

            self._client = MilvusClient(self.uri, token=self.token or "")
            if self._ready:  # a reopened collection starts released
                self._client.load_collection(self.collection)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __del__(self):
        try:
            self.close()
            if self._workdir:
                shutil.rmtree(self._workdir, ignore_errors=True)
        except Exception:  # interpreter shutdown: nothing left to clean
            pass

    # --- creation ------------------------------------------------------------
    def _create(self, n: int) -> None:
        from pymilvus import DataType

        kind = self.index_type
        if kind == "auto":
            kind = "flat" if n < FLAT_BELOW else "hnsw"
        params = {}
        if kind == "ivf_flat":
            self.nlist = self.nlist or default_nlist(n)
            self.nprobe = self.nprobe or max(8, self.nlist // 32)
            params = {"nlist": self.nlist}
        elif kind == "hnsw":
            params = {"M": self.hnsw_m, "efConstruction": self.ef_construction}
        client = self.client
        if client.has_collection(self.collection):
            raise ValueError(f"Milvus at {self.uri!r} already has a collection {self.collection!r}; "
                             "give another collection name or open the saved index that made it")
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=self.dim)
        index_params = client.prepare_index_params()
        index_params.add_index(field_name=VECTOR_FIELD, index_type=_MILVUS_TYPES[kind], metric_type="IP",
                               params=params)
        client.create_collection(self.collection, schema=schema, index_params=index_params)
        self.index_type = kind
        self._ready = True

    # --- backend -------------------------------------------------------------
    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not self._ready:
            self._create(len(vectors))
        for start in range(0, len(ids), INSERT_BATCH):
            stop = start + INSERT_BATCH
            self.client.insert(self.collection, [
                {ID_FIELD: int(i), VECTOR_FIELD: v} for i, v in zip(ids[start:stop], vectors[start:stop])
            ])

    def _remove(self, ids: np.ndarray) -> None:
        self.client.delete(self.collection, ids=[int(i) for i in ids])

    def _search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        params = {}
        if self.index_type == "ivf_flat":
            params = {"nprobe": self.nprobe}
        elif self.index_type == "hnsw":
            params = {"ef": max(self.ef_search, k)}
        answers = self.client.search(self.collection, data=vectors, limit=k, anns_field=VECTOR_FIELD,
                                     search_params={"metric_type": "IP", "params": params}, output_fields=[])
        sims = np.full((len(vectors), k), np.nan, np.float32)
        ids = np.full((len(vectors), k), MISSING, np.int64)
        for q, hits in enumerate(answers):
            for rank, hit in enumerate(list(hits)[:k]):
                ids[q, rank] = int(hit["id"])
                sims[q, rank] = float(hit["distance"])
        return sims, ids

    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        rows = self.client.get(self.collection, ids=[int(i) for i in ids], output_fields=[VECTOR_FIELD])
        by_id = {int(r[ID_FIELD]): np.asarray(r[VECTOR_FIELD], np.float32) for r in rows}
        return np.stack([by_id[int(i)] for i in ids])

    def settings(self) -> dict:
        out = {"backend": self.backend, "index_type": self.index_type, "collection": self.collection,
               "uri": DB_NAME if self.lite else self.uri}
        if self.index_type == "ivf_flat":
            out.update(nlist=self.nlist, nprobe=self.nprobe)
        if self.index_type == "hnsw":
            out.update(hnsw_m=self.hnsw_m, ef_construction=self.ef_construction, ef_search=self.ef_search)
        return out

    # --- files ---------------------------------------------------------------
    def write(self, folder: str) -> list[str]:
        """Copies a Milvus Lite database into `folder` (nothing for a server); returns file names."""
        if not self.lite:
            return []
        if self._ready:
            self.client.flush(self.collection)
        self.close()  # Milvus Lite holds a lock on its database while open
        if os.path.exists(self.uri):
            shutil.copytree(self.uri, os.path.join(folder, DB_NAME),
                            ignore=shutil.ignore_patterns("LOCK"))
        else:
            os.makedirs(os.path.join(folder, DB_NAME))
        return [DB_NAME]

    @classmethod
    def read(cls, folder: str, metadata: dict, *, token: str | None = None) -> "MilvusIndex":
        """The index saved in `folder`; a Milvus Lite database is opened on a copy."""
        settings = metadata["settings"]
        uri = settings["uri"]
        workdir = None
        if is_lite_uri(uri):
            workdir = tempfile.mkdtemp(prefix="tfdnc-milvus-")
            saved = os.path.join(folder, DB_NAME)
            if not os.path.isdir(saved):
                raise ValueError(f"Milvus Lite database {saved!r} is missing")
            uri = os.path.join(workdir, DB_NAME)
            shutil.copytree(saved, uri)
        index = cls(metadata["dim"], uri, settings["collection"], settings["index_type"], token=token,
                    max_k=metadata["max_k"], nlist=settings.get("nlist"), nprobe=settings.get("nprobe"),
                    hnsw_m=settings.get("hnsw_m", 32), ef_construction=settings.get("ef_construction", 40),
                    ef_search=settings.get("ef_search", 128))
        index._workdir = workdir
        index._ready = index.client.has_collection(index.collection)
        if index._ready or metadata.get("count"):
            index._check_collection()
            index.client.load_collection(index.collection)
        return index

    def _check_collection(self) -> None:
        client = self.client
        if not client.has_collection(self.collection):
            raise ValueError(f"Milvus at {self.uri!r} has no collection {self.collection!r}")
        fields = client.describe_collection(self.collection)["fields"]
        dims = [int(f["params"]["dim"]) for f in fields if f["name"] == VECTOR_FIELD]
        if dims != [self.dim]:
            raise ValueError(f"Milvus collection {self.collection!r} holds vectors of dimension "
                             f"{dims[0] if dims else None}, the index metadata says {self.dim}")
