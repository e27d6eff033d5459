"""Saving an index beside the export it was built from, versioned and never overwritten.

Layout, next to TF Serving's BASE/NAME/VERSION (TF Serving ignores folders
whose name is not an integer):

    exports/dnc/1/                  the SavedModel
    exports/dnc/1.index/1/          an index of export version 1
        index.json                  dimension, metric, backend settings, threshold,
                                    the export's path / version / fingerprint,
                                    sha256 of every file below
        ids.npz                     ids -> image paths and labels
        index.faiss | milvus.db     the backend's own files
    exports/dnc/1.index/2/          the same index after `tfdnc index add`...

Every change is written as a new index version (staged under a hidden name
and renamed into place, as exports are). Opening checks the checksums, the
dimension, and, given an export, that the index was built from that export
(same fingerprint: sha256 of its saved_model.pb and variables index).

Writers of one index folder take turns (`tfdnc.index.lock`): `update_index`
holds the folder's lock from reading the newest version to saving the next,
and `save_index` takes it for its save, so no writer's version is lost to
another's.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from contextlib import contextmanager
from typing import Iterator

from tfdnc.exporting import contract
from tfdnc.exporting.versions import list_versions, resolve_version_dir, staged_version
from tfdnc.index.base import VectorIndex
from tfdnc.index.errors import IndexMismatchError
from tfdnc.index.idmap import IdMap
from tfdnc.index.lock import index_lock
from tfdnc.utils import read_json, write_json

META_FILE = "index.json"
IDMAP_FILE = "ids.npz"
FORMAT = 1
INDEX_SUFFIX = ".index"
_FINGERPRINT_FILES = ("saved_model.pb", os.path.join("variables", "variables.index"))


# --- exports -----------------------------------------------------------------


def resolve_export(path: str | os.PathLike) -> str:
    """An export version folder from a version folder, BASE/NAME, or a run directory.

    A run directory (what `python train.py --export` wrote) holds
    RUN_DIR/export/NAME/VERSION; its only model's latest version is used.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"export {path!r} does not exist")
    exports = os.path.join(path, "export")
    if not os.path.isfile(os.path.join(path, "saved_model.pb")) and not list_versions(path) \
            and os.path.isdir(exports):
        models = sorted(m for m in os.listdir(exports) if list_versions(os.path.join(exports, m)))
        if len(models) != 1:
            raise FileNotFoundError(f"run directory {path!r}: expected one exported model under "
                                    f"{exports!r}, found {models or 'none'}")
        path = os.path.join(exports, models[0])
    return resolve_version_dir(path)


def export_fingerprint(version_dir: str) -> str:
    """sha256 of an export's saved_model.pb and variables index (which holds every weight's checksum)."""
    digest = hashlib.sha256()
    for name in _FINGERPRINT_FILES:
        path = os.path.join(version_dir, name)
        if os.path.isfile(path):
            digest.update(name.encode())
            digest.update(_sha256_file(path).encode())
    return digest.hexdigest()


def export_record(version_dir: str) -> dict:
    """What an index remembers of its export."""
    version_dir = resolve_export(version_dir)
    name = os.path.basename(os.path.normpath(version_dir))
    meta_path = os.path.join(version_dir, contract.ASSETS_EXTRA, contract.METADATA_FILE)
    meta = read_json(meta_path, what="export metadata") if os.path.isfile(meta_path) else {}
    return {
        "path": os.path.abspath(version_dir),
        "model": meta.get("model") or os.path.basename(os.path.dirname(os.path.abspath(version_dir))),
        "version": int(name) if name.isdigit() else None,
        "fingerprint": export_fingerprint(version_dir),
    }


def index_home(export_version_dir: str) -> str:
    """BASE/NAME/VERSION -> BASE/NAME/VERSION.index, where that export's index versions go."""
    return os.path.normpath(export_version_dir) + INDEX_SUFFIX


# --- save ----------------------------------------------------------------------


def save_index(index: VectorIndex, home: str | os.PathLike | None = None, *, export: str | None = None,
               export_info: dict | None = None, version: int | None = None) -> str:
    """Writes `index` as a new version under `home`; returns the version folder.

    Args:
        index: a `FaissIndex` or `MilvusIndex`.
        home: the folder of index versions; default: beside `export`
            (BASE/NAME/VERSION.index).
        export: the export version the embeddings came from (recorded and
            checked when the index is opened with an export).
        export_info: an `export_record` already computed (instead of `export`).
        version: an explicit index version; default: the next free one.
            Existing versions are never overwritten.

    Waits for another writer of `home` (see `update_index`) before saving.
    """
    if export_info is None and export is not None:
        export_info = export_record(export)
    if home is None:
        if export_info is None:
            raise ValueError("save_index: give `home` or `export`")
        home = index_home(export_info["path"])
    with index_lock(home), staged_version(home, version) as staged:
        files = index.write(staged.staging)
        index.id_map.save(os.path.join(staged.staging, IDMAP_FILE))
        files.append(IDMAP_FILE)
        metadata = {
            "format": FORMAT,
            "backend": index.backend,
            "dim": index.dim,
            "metric": "cosine",
            "max_k": index.max_k,
            "count": len(index),
            "threshold": index.threshold,
            "calibration": index.calibration,
            "settings": index.settings(),
            "export": export_info,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "files": {name: _sha256_path(os.path.join(staged.staging, name)) for name in files},
        }
        write_json(os.path.join(staged.staging, META_FILE), metadata)
    return staged.path


# --- open ----------------------------------------------------------------------


def find_index_dir(path: str | os.PathLike) -> str:
    """An index version folder from itself, its home (latest version) or its export version."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, META_FILE)):
        return path
    versions = list_versions(path)
    if versions and os.path.isfile(os.path.join(path, str(versions[-1]), META_FILE)):
        return os.path.join(path, str(versions[-1]))  # an index home
    home = path
    try:
        home = index_home(resolve_export(path))
    except FileNotFoundError:
        pass
    versions = list_versions(home)
    if not versions:
        raise FileNotFoundError(f"no saved index at {path!r} (looked for {META_FILE} and for index "
                                f"versions under {home!r}); build one with `tfdnc index build`")
    return os.path.join(home, str(versions[-1]))


def read_metadata(index_dir: str) -> dict:
    """index.json of an index version, checked for format."""
    path = os.path.join(index_dir, META_FILE)
    try:
        meta = read_json(path, what="index metadata")
    except ValueError as exc:
        raise IndexMismatchError(str(exc)) from None
    required = {"format", "backend", "dim", "max_k", "settings", "files"}
    if not isinstance(meta, dict) or not required <= set(meta):
        raise IndexMismatchError(f"index metadata {path!r} is not a tfdnc index "
                                 f"(missing {sorted(required - set(meta or {}))})")
    if meta["format"] != FORMAT:
        raise IndexMismatchError(f"index {index_dir!r} has format {meta['format']}, this tfdnc reads {FORMAT}")
    return meta


def open_index(path: str | os.PathLike, *, export: str | None = None, dim: int | None = None,
               token: str | None = None, work_dir: str | os.PathLike | None = None) -> VectorIndex:
    """Loads a saved index, refusing a corrupted or mismatched one with `IndexMismatchError`.

    Args:
        path: an index version folder, an index home (its latest version),
            or an export version / run directory (its index's latest version).
        export: the export whose embeddings will query the index: it must be
            the export the index was built from.
        dim: the embedding dimension the caller will use.
        token: Milvus server credentials.
        work_dir: where a Milvus Lite index's working copy goes (default:
            the system temp folder; see `MilvusIndex`).

    Examples:
        >>> index = open_index("exports/dnc/1", export="exports/dnc/1")
        >>> from tfdnc.serving import ExportedModel
        >>> model = ExportedModel("exports/dnc")
        >>> records = index.search(model.embed(["query.jpg"]), k=3).to_records()
    """
    from tfdnc.index.faiss_index import FaissIndex
    from tfdnc.index.milvus_index import MilvusIndex

    index_dir = find_index_dir(path)
    meta = read_metadata(index_dir)
    for name, expected in meta["files"].items():
        file_path = os.path.join(index_dir, name)
        if not os.path.exists(file_path):
            raise IndexMismatchError(f"index file {file_path!r} is missing")
        if _sha256_path(file_path) != expected:
            raise IndexMismatchError(f"index file {file_path!r} is corrupted: its sha256 differs from "
                                     f"the one recorded in {META_FILE} when it was saved")
    if dim is not None and int(dim) != int(meta["dim"]):
        raise IndexMismatchError(f"index {index_dir!r} holds {meta['dim']}-dimensional embeddings, "
                                 f"the model gives {dim}")
    if export is not None:
        check_export(meta, index_dir, export)
    backends = {"faiss": FaissIndex, "milvus": MilvusIndex}
    if meta["backend"] not in backends:
        raise IndexMismatchError(f"index {index_dir!r} has unknown backend {meta['backend']!r}")
    try:
        if meta["backend"] == "milvus":
            index = MilvusIndex.read(index_dir, meta, token=token, work_dir=work_dir)
        else:
            index = FaissIndex.read(index_dir, meta)
        index.id_map = IdMap.load(os.path.join(index_dir, IDMAP_FILE))
    except ValueError as exc:
        raise IndexMismatchError(str(exc)) from None
    index.threshold = meta.get("threshold")
    index.calibration = meta.get("calibration")
    index.saved_path = index_dir
    index.export_info = meta.get("export")
    stored = meta.get("count")
    if stored is not None and stored != len(index):
        raise IndexMismatchError(f"index {index_dir!r}: its id map holds {len(index)} images, "
                                 f"its metadata says {stored}")
    return index


@contextmanager
def update_index(path: str | os.PathLike, *, export: str | None = None, dim: int | None = None,
                 token: str | None = None, timeout: float | None = None) -> Iterator[VectorIndex]:
    """Opens an index to change it, one writer at a time; leaving the block saves the next version.

    The index folder's lock is held from reading to saving, and another
    writer waits for it. Given an export, a run directory or an index folder,
    the block changes the newest version at the time the lock is taken, so
    a version another writer saved meanwhile is built on, not lost; given an
    index version folder, that version. An exception in the block saves
    nothing.

    Args:
        path, export, dim, token: as for `open_index`.
        timeout: seconds to wait for another writer (None: as long as it
            takes), then `IndexLockedError` naming it.

    Yields:
        The open index; after the block its `saved_path` is the new version.

    Examples:
        >>> from tfdnc.serving import ExportedModel
        >>> embeddings = ExportedModel("exports/dnc").embed(["a.jpg", "b.png"])
        >>> paths, labels = ["a.jpg", "b.png"], ["a", "b"]
        >>> with update_index("exports/dnc/1", export="exports/dnc/1") as index:
        ...     ids = index.add(embeddings, paths, labels)
        >>> index.saved_path
        'exports/dnc/1.index/2'
    """
    path = os.fspath(path)
    pinned = os.path.isfile(os.path.join(path, META_FILE))
    home = os.path.dirname(os.path.normpath(find_index_dir(path)))
    with index_lock(home, timeout):
        index_dir = path if pinned else find_index_dir(home)  # newest, now that nobody else writes
        # A Milvus Lite working copy goes into the index folder, where the next writer removes it if we die.
        index = open_index(index_dir, export=export, dim=dim, token=token, work_dir=home)
        try:
            yield index
            export_info = export_record(export) if export is not None else getattr(index, "export_info", None)
            index.saved_path = save_index(index, home, export_info=export_info)
        except BaseException:
            index.discard()
            raise


def check_export(meta: dict, index_dir: str, export: str) -> None:
    """`IndexMismatchError` unless the index at `index_dir` was built from `export`."""
    built_from = meta.get("export")
    current = export_record(export)
    if not built_from:
        raise IndexMismatchError(f"index {index_dir!r} records no export, so it cannot be checked "
                                 f"against {current['path']!r}")
    if built_from.get("fingerprint") != current["fingerprint"]:
        raise IndexMismatchError(
            f"index {index_dir!r} was built from export {built_from.get('path')!r} (model "
            f"{built_from.get('model')!r}, version {built_from.get('version')}), not from "
            f"{current['path']!r}: the model fingerprints differ, so its embeddings do not match; "
            "build an index for this export"
        )


# --- checksums -----------------------------------------------------------------


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_path(path: str) -> str:
    """sha256 of a file, or of every file under a folder (names and contents, sorted)."""
    if not os.path.isdir(path):
        return _sha256_file(path)
    digest = hashlib.sha256()
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            if name == "LOCK":
                continue
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode())
            digest.update(_sha256_file(full).encode())
    return digest.hexdigest()


