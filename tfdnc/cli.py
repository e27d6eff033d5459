"""The `tfdnc` command: train, export, evaluate, report, pretrain, embed, search, index.

    tfdnc train --dataset mnist --epochs 4                   # = python train.py
    tfdnc export runs/default --base exports --name dnc      # = python -m tfdnc.exporting
    tfdnc evaluate runs/default                              # a run, .keras file or export
    tfdnc report runs/default                                # an HTML page of the run
    tfdnc pretrain --dataset mnist --out backbone.weights.h5
    tfdnc embed exports/dnc images/ --output embeddings.npy
    tfdnc search exports/dnc query.jpg -k 5                  # the export's gallery
    tfdnc search exports/dnc queries/ --gallery gallery/ --output hits.csv
    tfdnc index build exports/dnc gallery/

`tfdnc --help` and `tfdnc COMMAND --help` import no TensorFlow: each command's
arguments are parsed (a bad one exits with status 2 and a line naming it)
before its work, and TensorFlow, start. A bad setting, path or data set found
later (`tfdnc.utils.errors.UserInputError`) is one line `tfdnc COMMAND: error:
...` and status 2 too; `--debug` shows its traceback. Any other error is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import sys
import types
from typing import Sequence

import numpy as np

from tfdnc.config.flags import ArgumentParser, positive_int
from tfdnc.exporting import contract
from tfdnc.serving.files import embed_files, embed_files_skipping, name_bad_image, read_files, report_skipped
from tfdnc.utils.errors import run_reporting_errors
from tfdnc.utils.records import write_records
from tfdnc.utils.startup import import_tensorflow_quietly

OUTPUT_FORMATS = (".npy", ".npz", ".json", ".csv")

# command -> (module with build_parser() and main(argv), one line of help). The
# modules import TensorFlow only inside main, after their arguments parsed.
COMMANDS = {
    "train": ("tfdnc.config.flags", "tfdnc.train", "train, evaluate and export a Divide & Conquer model (= python train.py)"),
    "export": ("tfdnc.exporting.cli", "tfdnc.exporting.cli", "export a run or .keras file as a SavedModel version"),
    "evaluate": ("tfdnc.evaluation_cli", "tfdnc.evaluation_cli", "evaluate a run, .keras file or export on a benchmark"),
    "report": ("tfdnc.report.__main__", "tfdnc.report.__main__", "an HTML report of a training run"),
    "pretrain": ("tfdnc.pretrain.cli", "tfdnc.pretrain.cli", "self-supervised pretraining of a backbone"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfdnc", description=__doc__.split("\n\n")[0],
                                     epilog="`tfdnc COMMAND --help` for a command's arguments.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, _, text) in COMMANDS.items():
        commands.add_parser(name, help=text, add_help=False)  # parsed by the command's own parser

    embed = commands.add_parser("embed", help="embed images with an exported SavedModel")
    embed.add_argument("export", help="export folder: BASE/NAME (latest version) or BASE/NAME/VERSION")
    embed.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    embed.add_argument("--output", "-o", default=None,
                       help="write .npy (+ .ids.txt beside it), .npz (embeddings, ids, paths, labels: "
                       "a --gallery for `tfdnc search`), .json or .csv; default: CSV on stdout")
    embed.add_argument("--batch-size", type=positive_int, default=32,
                       help="images per request to the model (default: 32)")
    embed.add_argument("--learners", action="store_true",
                       help="per-learner embeddings (embed_learners signature) instead of the full one")

    search = commands.add_parser("search", help="nearest gallery images for query images")
    search.add_argument("export", help="export folder: BASE/NAME or BASE/NAME/VERSION")
    search.add_argument("queries", nargs="+", help="query image files and/or folders")
    search.add_argument("--gallery", default=None,
                        help="folder of images, .npz (`embeddings`, `ids`: what `tfdnc embed -o x.npz` writes) "
                        "or .npy of embeddings (ids: its .ids.txt beside it, else row numbers) to search; "
                        "default: the gallery built into the export (`search` signature)")
    search.add_argument("-k", type=positive_int, default=5,
                        help="hits per query (default 5; with the export's gallery: up to its --max-k)")
    search.add_argument("--output", "-o", default=None, help="write .json or .csv; default: table on stdout")
    search.add_argument("--batch-size", type=positive_int, default=32,
                        help="images per request to the model (default: 32)")

    from tfdnc.index import cli as index_cli

    index_cli.add_parser(commands)
    return one_line_errors(parser)


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Makes `parser` and its subcommands' parsers report a bad argument in one line (exit status 2)."""
    parser.error = types.MethodType(ArgumentParser.error, parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                one_line_errors(sub)
    return parser


def quiet_tensorflow() -> None:
    """Hides TensorFlow's start-up INFO / WARNING lines, unless TF_CPP_MIN_LOG_LEVEL is set.

    For the commands only (they own their process); `import tfdnc` changes no
    such setting.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_command(name: str, argv: Sequence[str], prog: str | None = None) -> int:
    """Runs one of `COMMANDS` (`python train.py` is `run_command("train", ..., prog="train.py")`)."""
    parser_module, main_module, _ = COMMANDS[name]
    parser = one_line_errors(importlib.import_module(parser_module).build_parser())
    parser.prog = prog or f"tfdnc {name}"
    args = parser.parse_args(argv)  # --help and bad arguments end here, before TensorFlow
    quiet_tensorflow()
    import_tensorflow_quietly()
    command = importlib.import_module(main_module).main
    return run_reporting_errors(parser.prog, lambda: command(list(argv)), debug=getattr(args, "debug", False))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return run_command(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    quiet_tensorflow()
    import_tensorflow_quietly()
    if args.command == "index":
        from tfdnc.index import cli as index_cli

        return index_cli.main(args)
    from tfdnc.serving.errors import ServingError

    try:
        if args.command == "embed":
            return _embed(args)
        return _search(args)
    except (ServingError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"tfdnc {args.command}: error: {err}", file=sys.stderr)
        return 2


# --- embed -------------------------------------------------------------------


def _embed(args) -> int:
    from tfdnc.serving.local import ExportedModel

    _check_output(args.output, OUTPUT_FORMATS)
    model = ExportedModel(args.export)
    signature = contract.EMBED_LEARNERS if args.learners else contract.SERVING_DEFAULT
    if signature not in model.signature_names:
        raise ValueError(f"export {model.path!r} has no {signature!r} signature "
                         f"(it has {model.signature_names})")
    entries = collect_images(args.images)
    output = contract.LEARNER_EMBEDDINGS if args.learners else contract.EMBEDDINGS
    embeddings, entries = embed_skipping(model, entries, signature, output, args.batch_size, "tfdnc embed")
    ids = [image_id for image_id, _ in entries]
    _write_embeddings(args.output, ids, embeddings, model.path, entries)
    if args.output:
        print(f"{len(ids)} embeddings of shape {embeddings.shape[1:]} -> {args.output}", file=sys.stderr)
    return 0


def collect_images(items: Sequence[str]) -> list[tuple[str, str]]:
    """Files and folders -> (id, path) pairs; ids of folder images are relative paths."""
    from tfdnc.exporting.gallery import list_images

    entries = []
    for item in items:
        if os.path.isdir(item):
            entries.extend(list_images(item))
        elif os.path.isfile(item):
            entries.append((item, item))
        else:
            raise FileNotFoundError(f"image file or folder {item!r} does not exist")
    return entries


def image_labels(entries: Sequence[tuple[str, str]]) -> list[str | None]:
    """The class of each (id, path) entry from a folder: the subfolder of its id (None at the top or for a file)."""
    return [image_id.rsplit("/", 1)[0] if "/" in image_id and image_id != path else None
            for image_id, path in entries]


def embed_with_progress(model, entries, signature, output, batch_size: int, what: str = "images") -> np.ndarray:
    """`embed_files` batch by batch, with a progress bar on a terminal (none when output is piped)."""
    from tqdm import tqdm

    if not entries:
        return embed_files(model, entries, signature, output, batch_size)  # its own error for nothing to embed
    parts = []
    with tqdm(total=len(entries), desc=f"embedding {what}", unit="img", disable=None, file=sys.stderr) as bar:
        for start in range(0, len(entries), batch_size):
            batch = entries[start : start + batch_size]
            parts.append(embed_files(model, batch, signature, output, batch_size))
            bar.update(len(batch))
    return np.concatenate(parts)


def embed_skipping(model, entries, signature, output, batch_size: int, prog: str,
                   what: str = "images") -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Embeds the files it can read, as training does: each file left out is named on stderr, with why.

    Returns (embeddings, the entries embedded), row for row.
    """
    from tqdm import tqdm

    if not entries:
        raise ValueError("no image files to embed")
    parts, kept, skipped = [], [], []
    with tqdm(total=len(entries), desc=f"embedding {what}", unit="img", disable=None, file=sys.stderr) as bar:
        for start in range(0, len(entries), batch_size):
            batch = entries[start : start + batch_size]
            vectors, batch_kept, batch_skipped = embed_files_skipping(model, batch, signature, output, batch_size)
            if vectors is not None:
                parts.append(vectors)
            kept.extend(batch_kept)
            skipped.extend(batch_skipped)
            bar.update(len(batch))
    report_skipped(prog, skipped, len(entries))
    if not kept:
        raise ValueError(f"none of the {len(entries)} image files could be read (each is named above)")
    return np.concatenate(parts), kept


def _write_embeddings(output, ids, embeddings, source, entries) -> None:
    if output is None:
        writer = csv.writer(sys.stdout)
        for image_id, row in zip(ids, embeddings.reshape(len(ids), -1)):
            writer.writerow([image_id, *(f"{v:.7g}" for v in row)])
        return
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    suffix = os.path.splitext(output)[1].lower()
    if suffix == ".npy":
        np.save(output, embeddings)
        with open(os.path.splitext(output)[0] + ".ids.txt", "w") as f:
            f.writelines(f"{image_id}\n" for image_id in ids)
    elif suffix == ".npz":
        # What `search --gallery` and `Gallery.from_npz` read; strings, not objects, so no pickle is needed.
        labels = [label or "" for label in image_labels(entries)]
        np.savez(output, embeddings=embeddings, ids=np.array(ids, dtype=np.str_),
                 paths=np.array([path for _, path in entries], dtype=np.str_),
                 **({"labels": np.array(labels, dtype=np.str_)} if any(labels) else {}))
    elif suffix == ".json":
        with open(output, "w") as f:
            json.dump({"export": source, "ids": ids, "embeddings": embeddings.tolist()}, f)
    else:
        flat = embeddings.reshape(len(ids), -1)
        with open(output, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", *(f"e{i}" for i in range(flat.shape[1]))])
            for image_id, row in zip(ids, flat):
                writer.writerow([image_id, *(f"{v:.9g}" for v in row)])


# --- search ------------------------------------------------------------------


def _search(args) -> int:
    from tfdnc.serving.local import ExportedModel

    _check_output(args.output, (".json", ".csv"))
    model = ExportedModel(args.export)
    queries = collect_images(args.queries)
    query_ids = [image_id for image_id, _ in queries]
    if args.gallery is None:
        result = _search_export_gallery(model, queries, args.k, args.batch_size)
    else:
        queries_emb = embed_with_progress(model, queries, contract.SERVING_DEFAULT, contract.EMBEDDINGS,
                                  args.batch_size)
        gallery_ids, gallery_emb = _load_gallery(model, args.gallery, args.batch_size)
        result = search_embeddings(queries_emb, gallery_emb, gallery_ids, args.k)
    records = result.to_records(query_ids)
    _write_records(args.output, records)
    return 0


def _search_export_gallery(model, queries, k: int, batch_size: int):
    """The export's own gallery, through the client's `search` (`search_k` when the export has it)."""
    from tfdnc.serving.errors import ServingError

    if contract.SEARCH not in model.signature_names:
        raise ValueError(
            f"export {model.path!r} has no gallery (`search` signature); give --gallery "
            "or export with `tfdnc export ... --gallery DIR`"
        )
    max_k = model.export_metadata.get("max_k")
    if contract.SEARCH_K in model.signature_names and max_k is not None and k > max_k:
        raise ValueError(f"-k {k} exceeds the {max_k} hits this export's `search_k` allows "
                         "(export again with a larger --max-k)")
    try:
        return model.search([path for _, path in queries], batch_size=batch_size, k=k)
    except ServingError as err:
        if err.code == "INVALID_ARGUMENT":
            name_bad_image(model, queries, read_files(queries), contract.SEARCH)
        raise


def _load_gallery(model, gallery, batch_size):
    if os.path.isdir(gallery):
        entries = collect_images([gallery])
        embeddings, entries = embed_skipping(model, entries, contract.SERVING_DEFAULT, contract.EMBEDDINGS,
                                             batch_size, "tfdnc search", what="gallery")
        return np.array([i for i, _ in entries], dtype=object), embeddings
    from tfdnc.exporting.gallery import Gallery

    if os.path.splitext(gallery)[1].lower() == ".npy":
        loaded = Gallery(*_read_npy_gallery(gallery))
    else:
        loaded = Gallery.from_npz(gallery)
    return loaded.ids, loaded.embeddings


def _read_npy_gallery(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, ids) of a .npy `tfdnc embed` wrote: ids from the .ids.txt beside it, else row numbers."""
    try:
        embeddings = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read gallery file {path!r}: {exc}") from exc
    ids_file = os.path.splitext(path)[0] + ".ids.txt"
    if not os.path.isfile(ids_file):
        return embeddings, np.arange(len(embeddings))
    with open(ids_file) as f:
        ids = f.read().splitlines()
    if len(ids) != len(embeddings):
        raise ValueError(f"{ids_file!r} has {len(ids)} ids for the {len(embeddings)} rows of {path!r}")
    return embeddings, np.array(ids, dtype=object)


def search_embeddings(queries: np.ndarray, gallery: np.ndarray, ids: np.ndarray, k: int):
    """Exact cosine top-k of every query among the gallery rows (a `SearchResult`).

    k is clipped to the gallery size; the search is tfdnc's one exact top-k
    (`tfdnc.evaluation.neighbors`), so ties rank the lower gallery row first.
    """
    from tfdnc.evaluation.neighbors import nearest_neighbors
    from tfdnc.serving.client import SearchResult

    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"gallery embeddings have {gallery.shape[1]} dims, the export's have {queries.shape[1]}")
    indices, similarities = nearest_neighbors(queries, gallery, k=min(k, gallery.shape[0]), metric="cosine")
    return SearchResult(ids=np.asarray(ids)[indices], similarities=similarities, indices=indices.astype(np.int32))


def _write_records(output, records) -> None:
    if output is None:
        for r in records:
            print(f"{r['query']}\t{r['rank']}\t{r['id']}\t{r['similarity']:.4f}")
        return
    write_records(output, records, ["query", "rank", "id", "similarity", "index"])


def _check_output(output, formats) -> None:
    if output is not None and os.path.splitext(output)[1].lower() not in formats:
        raise ValueError(f"--output {output!r} must end in one of {', '.join(formats)}")


if __name__ == "__main__":
    sys.exit(main())
