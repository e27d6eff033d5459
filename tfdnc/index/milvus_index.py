"""The scale-out backend: a Milvus collection through pymilvus.

`uri` is a Milvus Lite database (a local path ending in ".db": embedded,
one machine, what the tests use) or a Milvus server / cluster address
("http://host:19530"). The same tfdnc calls work on both; index types map to
Milvus's: "flat" -> FLAT, "ivf_flat" -> IVF_FLAT, "hnsw" -> HNSW, and
"auto" -> FLAT below `FLAT_BELOW` vectors in the first batch, HNSW above.

Saving: a Milvus Lite database is copied into the index version folder (so a
saved version never changes); opening a saved version works on a copy of it.
The working database lives in a private folder named after its process
(`.staging-PID@HOST.*` in the index folder for the `tfdnc index` writers,
`tfdnc-milvus-PID@HOST.*` in the system temp folder otherwise): a process
killed mid-build leaves it behind, and the next one to make such a folder
there removes it (`tfdnc.exporting.versions.make_staging_dir`).
A server collection lives on the server: a saved version records its address
and collection name, and later changes to the collection are not versioned.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from tfdnc.exporting.versions import make_staging_dir
from tfdnc.index.base import DEFAULT_MAX_K, VectorIndex
from tfdnc.index.faiss_index import FLAT_BELOW, default_nlist
from tfdnc.index.hits import MISSING

INDEX_TYPES = ("auto", "flat", "ivf_flat", "hnsw")
_MILVUS_TYPES = {"flat": "FLAT", "ivf_flat": "IVF_FLAT", "hnsw": "HNSW"}
DB_NAME = "milvus.db"
ID_FIELD, VECTOR_FIELD = "id", "embedding"
INSERT_BATCH = 10_000
TEMP_PREFIX = "tfdnc-milvus-"  # private folders in the system temp folder (PID@HOST follows)


def is_lite_uri(uri: str) -> bool:
    """Whether `uri` names a Milvus Lite database (a local path) rather than a server."""
    return not uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))


class MilvusIndex(VectorIndex):
    """A Milvus collection with ids, paths and labels; cosine similarity.

    Args:
        dim: embedding dimension.
        uri: Milvus Lite file ("gallery.db") or server URL; default: a new
            Milvus Lite database in a private folder under `work_dir`.
        collection: collection name.
        index_type: one of `INDEX_TYPES`.
        token: server credentials ("user:password" or an API key), if any.
        max_k, threshold: see `VectorIndex`.
        nlist, nprobe, hnsw_m, ef_construction, ef_search: as for
            `FaissIndex`.
        work_dir: where the private folder of a database without `uri`
            goes (default: the system temp folder); give the index folder
            the index will be saved in, so a killed build leaves nothing
            behind that the next save there does not remove.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> vectors, queries = rng.normal(size=(20, 128)), rng.normal(size=(2, 128))
        >>> paths = [f"gallery/{i}.jpg" for i in range(20)]
        >>> index = MilvusIndex(128, uri="gallery.db")            # Milvus Lite
        >>> index = MilvusIndex(128, uri="http://milvus:19530")   # a server  # doctest: +SKIP
        >>> ids = index.add(vectors, paths); hits = index.search(queries, k=5)
        >>> index.close()
    """

    backend = "milvus"

    def __init__(self, dim: int, uri: str | None = None, collection: str = "tfdnc_gallery",
                 index_type: str = "auto", *, token: str | None = None, max_k: int = DEFAULT_MAX_K,
                 threshold: float | None = None, nlist: int | None = None, nprobe: int | None = None,
                 hnsw_m: int = 32, ef_construction: int = 40, ef_search: int = 128,
                 work_dir: str | os.PathLike | None = None):
        super().__init__(dim, max_k=max_k, threshold=threshold)
        if index_type not in INDEX_TYPES:
            raise ValueError(f"MilvusIndex: `index_type` must be one of {INDEX_TYPES}, got {index_type!r}")
        if not collection or not collection.replace("_", "a").isalnum():
            raise ValueError(f"MilvusIndex: `collection` must be letters, digits and _, got {collection!r}")
        self._workdir = None
        if uri is None:
            self._workdir = private_dir(work_dir)
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

    def _stop_lite(self) -> None:
        """Closes the client and stops the in-process Milvus Lite server of `uri`.

        pymilvus keeps that server (and its database) running until the
        process exits, building segment indexes in a background thread after
        a flush; stopping it waits for them, so the files are complete and
        nobody writes them while they are copied or deleted. The next use of
        `client` starts it again.
        """
        self.close()
        if self.lite:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)

    def discard(self) -> None:
        """Closes the client and deletes the private working database, if any (saved versions stay)."""
        if not self._workdir:
            self.close()
        else:
            self._stop_lite()
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __del__(self):
        try:
            self.discard()
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
        self._stop_lite()  # a complete database, which nothing writes while it is copied
        if os.path.exists(self.uri):
            shutil.copytree(self.uri, os.path.join(folder, DB_NAME),
                            ignore=shutil.ignore_patterns("LOCK"))
        else:
            os.makedirs(os.path.join(folder, DB_NAME))
        return [DB_NAME]

    @classmethod
    def read(cls, folder: str, metadata: dict, *, token: str | None = None,
             work_dir: str | os.PathLike | None = None) -> "MilvusIndex":
        """The index saved in `folder`; a Milvus Lite database is opened on a private copy under `work_dir`."""
        settings = metadata["settings"]
        uri = settings["uri"]
        workdir = None
        if is_lite_uri(uri):
            saved = os.path.join(folder, DB_NAME)
            if not os.path.isdir(saved):
                raise ValueError(f"Milvus Lite database {saved!r} is missing")
            workdir = private_dir(work_dir)
            uri = os.path.join(workdir, DB_NAME)
        try:
            if workdir:
                shutil.copytree(saved, uri)
            index = cls(metadata["dim"], uri, settings["collection"], settings["index_type"], token=token,
                        max_k=metadata["max_k"], nlist=settings.get("nlist"), nprobe=settings.get("nprobe"),
                        hnsw_m=settings.get("hnsw_m", 32), ef_construction=settings.get("ef_construction", 40),
                        ef_search=settings.get("ef_search", 128))
        except BaseException:
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        index._workdir = workdir  # deleted with the index (discard)
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


def private_dir(work_dir: str | os.PathLike | None = None) -> str:
    """A new folder named after this process: under `work_dir` (an index folder) or the system temp folder.

    Making one removes the folders of dead processes beside it, so what a
    killed build left behind goes at the next one.
    """
    if work_dir is not None:
        return make_staging_dir(work_dir)
    return make_staging_dir(tempfile.gettempdir(), prefix=TEMP_PREFIX)
