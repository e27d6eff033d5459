"""`tfdnc index`: build, grow, search and calibrate a gallery index beside an export.

    tfdnc index build exports/dnc gallery/                 # faiss; index in exports/dnc/1.index/1
    tfdnc index build runs/default gallery/ --backend milvus   # Milvus Lite file in the index folder
    tfdnc index add exports/dnc new_images/                # -> exports/dnc/1.index/2
    tfdnc index remove exports/dnc --paths gallery/cat/3.jpg
    tfdnc index calibrate exports/dnc validation/ --precision 0.95
    tfdnc index search exports/dnc query.jpg -k 5 [--rest http://localhost:8501]
    tfdnc index info exports/dnc
    tfdnc index evaluate exports/dnc test/ --ks 1 10

EXPORT is an export version folder, BASE/NAME (its latest version) or a run
directory (RUN_DIR/export/NAME). Every change is saved as a new index version;
--index picks another index folder than EXPORT_VERSION.index. Writers of one
index (build, add, remove, calibrate) take turns: each changes the newest
version once the one before it has saved.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from tfdnc.utils.records import write_records

BACKENDS = ("faiss", "milvus")
INDEX_TYPES = ("auto", "flat", "ivf_flat", "ivf_pq", "hnsw")
BATCH_HELP = "images per request to the model (default: 32)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds `index` and its subcommands to a `tfdnc` subparsers object."""
    parser = subparsers.add_parser("index", help="build, update and search a gallery index",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    _fill(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfdnc index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _fill(parser)
    return parser


def _fill(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="index_command", required=True)

    def command(name, help_text, images=None):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("export", help="export version folder, BASE/NAME, or run directory")
        if images:
            sub.add_argument("images", nargs="+", help=images)
        sub.add_argument("--index", default=None,
                         help="index folder (default: EXPORT_VERSION.index, its latest version)")
        return sub

    images_help = "image folders (labels: class subfolders), CSV files (path[,label]) or image files"
    build = command("build", "embed images with the export and build a new index", images_help)
    build.add_argument("--backend", choices=BACKENDS, default="faiss",
                       help="faiss (an index file) or milvus (Milvus Lite file, or a server with --uri); "
                       "default: faiss")
    build.add_argument("--index-type", choices=INDEX_TYPES, default="auto",
                       help="auto: exact below 100k images, HNSW above (ivf_pq: faiss only)")
    build.add_argument("--max-k", type=int, default=100, help="largest k a search may ask for")
    build.add_argument("--uri", default=None,
                       help="milvus: server URL (http://host:19530); default: a Milvus Lite file in the index folder")
    build.add_argument("--collection", default="tfdnc_gallery", help="milvus collection name")
    build.add_argument("--batch-size", type=int, default=32, help=BATCH_HELP)

    add = command("add", "embed images and add them to the index (a new index version)", images_help)
    add.add_argument("--batch-size", type=int, default=32, help=BATCH_HELP)

    remove = command("remove", "remove images by id or path (a new index version)")
    which = remove.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", type=int, nargs="+", help="index ids of the images (as `search` lists them)")
    which.add_argument("--paths", nargs="+",
                       help="image paths: as indexed (relative to where build/add ran) or absolute")

    search = command("search", "nearest indexed images of query images",
                     "query image folders, CSV files or image files")
    search.add_argument("-k", type=int, default=5, help="hits per query (at most the index's max k)")
    search.add_argument("--all", action="store_true", help="also list hits below the match threshold")
    search.add_argument("--rest", default=None, help="embed through TF Serving's REST API at this URL")
    search.add_argument("--grpc", default=None, help="embed through TF Serving's gRPC API at host:port")
    search.add_argument("--model", default=None, help="model name on the server (default: the export's)")
    search.add_argument("--output", "-o", default=None, help="write .json or .csv; default: a table on stdout")
    search.add_argument("--batch-size", type=int, default=32, help=BATCH_HELP)

    command("info", "print the index metadata")

    calibrate = command("calibrate", "pick the match threshold reaching a precision on labelled images",
                        "labelled validation images: class folders or CSV with a label column")
    calibrate.add_argument("--precision", type=float, default=0.95, help="target precision (default 0.95)")
    calibrate.add_argument("--batch-size", type=int, default=32, help=BATCH_HELP)

    evaluate = command("evaluate", "Recall@K through the index next to exact search",
                       "labelled query images: class folders or CSV with a label column")
    evaluate.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8],
                          help="the K of the Recall@K reported (default: 1 2 4 8)")
    evaluate.add_argument("--exclude-self", action="store_true",
                          help="the queries are the indexed gallery: skip each query's own hit")
    evaluate.add_argument("--batch-size", type=int, default=32, help=BATCH_HELP)


def run(argv: Sequence[str] | None = None) -> int:
    """Parses `argv` (default: sys.argv) as `tfdnc index ...` and runs it."""
    return main(build_parser().parse_args(argv))


def main(args: argparse.Namespace) -> int:
    """Runs a parsed `tfdnc index` command; errors are printed, exit status 2."""
    from tfdnc.index.errors import IndexMismatchError
    from tfdnc.serving.errors import ServingError

    try:
        return _COMMANDS[args.index_command](args)
    except (IndexMismatchError, ServingError, ValueError, KeyError, FileNotFoundError,
            NotADirectoryError, FileExistsError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"tfdnc index {args.index_command}: error: {message}", file=sys.stderr)
        return 2


# --- commands ------------------------------------------------------------------


def _build(args) -> int:
    from tfdnc.index.faiss_index import FaissIndex
    from tfdnc.index.milvus_index import MilvusIndex
    from tfdnc.index.sources import collect_images, load_exported_model
    from tfdnc.index.store import export_record, index_home, save_index

    if args.backend == "milvus" and args.index_type == "ivf_pq":
        raise ValueError("--index-type ivf_pq is faiss only (Milvus Lite has no IVF_PQ); use hnsw or ivf_flat")
    images = collect_images(args.images)
    model = load_exported_model(args.export)
    export_info = export_record(model.path)
    home = args.index or index_home(export_info["path"])
    images, embeddings = _embed_readable(model, images, args.batch_size, "build")
    dim = embeddings.shape[1]
    if args.backend == "faiss":
        index = FaissIndex(dim, args.index_type, max_k=args.max_k)
    else:
        # A Lite database is built inside the index folder, where the next writer removes it if we are killed.
        index = MilvusIndex(dim, args.uri, args.collection, args.index_type, max_k=args.max_k,
                            work_dir=home if args.uri is None else None)
    try:
        index.add(embeddings, images.paths, images.labels)
        path = save_index(index, home, export_info=export_info)  # waits for another writer of `home`
    finally:
        index.discard()
    print(f"indexed {len(index)} images ({index.backend} {index.index_type}, dim {dim}) -> {path}")
    return 0


def _add(args) -> int:
    from tfdnc.index.sources import collect_images, load_exported_model
    from tfdnc.index.store import update_index

    export, target = _target(args)
    images = collect_images(args.images)
    # Embedding, the slow part, runs before taking the index's lock.
    images, embeddings = _embed_readable(load_exported_model(export), images, args.batch_size, "add")
    with update_index(target, export=export) as index:
        index.add(embeddings, images.paths, images.labels)
    index.discard()
    print(f"added {len(images)} images ({len(index)} in all) -> {index.saved_path}")
    return 0


def _remove(args) -> int:
    from tfdnc.index.store import update_index

    export, target = _target(args)
    with update_index(target, export=export) as index:
        removed = index.remove(args.ids) if args.ids else index.remove_paths(args.paths)
    index.discard()
    print(f"removed {removed} images ({len(index)} left) -> {index.saved_path}")
    return 0


def _search(args) -> int:
    from tfdnc.index.service import SearchService
    from tfdnc.index.sources import collect_images
    from tfdnc.index.store import find_index_dir, resolve_export

    if args.output and os.path.splitext(args.output)[1].lower() not in (".json", ".csv"):
        raise ValueError(f"--output {args.output!r} must end in .json or .csv")
    queries = collect_images(args.images)
    export = resolve_export(args.export)
    remote = bool(args.rest or args.grpc)
    service = SearchService.open(find_index_dir(args.index or export), export=None if remote else export,
                                 rest=args.rest, grpc=args.grpc, model=args.model, batch_size=args.batch_size)
    records = service.search_records(queries.paths, args.k, include_unmatched=args.all)
    _write_records(args.output, records)
    return 0


def _info(args) -> int:
    from tfdnc.index.store import find_index_dir, read_metadata

    index_dir = find_index_dir(args.index or _export_dir(args.export))
    meta = read_metadata(index_dir)
    print(json.dumps({"path": index_dir, **meta}, indent=2))
    return 0


def _calibrate(args) -> int:
    from tfdnc.index.sources import load_exported_model
    from tfdnc.index.store import update_index

    export, target = _target(args)
    images, embeddings = _labelled_embeddings(args, load_exported_model(export), "calibrate")
    with update_index(target, export=export) as index:
        result = index.calibrate(embeddings, images.labels, args.precision, paths=images.paths)
    index.discard()
    print(json.dumps({**result, "index": index.saved_path}, indent=2))
    return 0


def _evaluate(args) -> int:
    from tfdnc.index.recall import recall_through_index

    index, model = _open(args)
    images, queries = _labelled_embeddings(args, model, "evaluate")
    result = recall_through_index(index, queries, images.labels, ks=args.ks, exclude_self=args.exclude_self)
    print(json.dumps(result, indent=2))
    return 0


_COMMANDS = {"build": _build, "add": _add, "remove": _remove, "search": _search, "info": _info,
             "calibrate": _calibrate, "evaluate": _evaluate}


# --- helpers -------------------------------------------------------------------


def _export_dir(export: str) -> str:
    from tfdnc.index.store import resolve_export

    return resolve_export(export)


def _open(args):
    """(index, in-process model) for EXPORT / --index, to read."""
    from tfdnc.index.sources import load_exported_model
    from tfdnc.index.store import open_index

    export = _export_dir(args.export)
    return open_index(args.index or export, export=export), load_exported_model(export)


def _target(args) -> tuple[str, str]:
    """(export version folder, the index a writer changes), checked before any slow work.

    The index must exist and have been built from the export; `update_index`
    opens its newest version again once it holds the lock.
    """
    from tfdnc.index.store import check_export, find_index_dir, read_metadata

    export = _export_dir(args.export)
    target = args.index or export
    index_dir = find_index_dir(target)
    check_export(read_metadata(index_dir), index_dir, export)
    return export, target


def _embed_readable(model, images, batch_size: int, command: str):
    """(the images the model can read, their embeddings): each file left out is named on stderr, as training does."""
    from tfdnc.exporting import contract
    from tfdnc.index.sources import ImageList
    from tfdnc.serving.files import embed_files_skipping, report_skipped

    entries = [(label, path) for path, label in zip(images.paths, images.labels)]
    embeddings, kept, skipped = embed_files_skipping(model, entries, contract.SERVING_DEFAULT, contract.EMBEDDINGS,
                                                     batch_size)
    report_skipped(f"tfdnc index {command}", skipped, len(entries))
    if embeddings is None:
        raise ValueError(f"none of the {len(entries)} image files could be read (each is named above)")
    return ImageList([path for _, path in kept], [label for label, _ in kept]), embeddings


def _labelled_embeddings(args, model, command: str):
    """The images named on the command line, which must all be labelled, and their embeddings."""
    from tfdnc.index.sources import collect_images, embed_images

    images = collect_images(args.images)
    if not images.labelled:
        raise ValueError(f"{command} needs labelled images: class subfolders or a CSV `label` column")
    return images, embed_images(model, images.paths, args.batch_size)


def _write_records(output, records) -> None:
    if output is None:
        for r in records:
            if r["id"] is None:
                print(f"{r['query']}\t-\tno match")
            else:
                mark = "" if r["match"] else "\t(below threshold)"
                print(f"{r['query']}\t{r['rank']}\t{r['path']}\t{r['label'] or ''}\t{r['similarity']:.4f}{mark}")
        return
    write_records(output, records, ["query", "rank", "id", "path", "label", "similarity", "match"])
