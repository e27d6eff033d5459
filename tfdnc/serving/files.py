"""Signatures run over image files in batches, a bad image named by its file.

Shared by `tfdnc embed` / `tfdnc search` and `tfdnc index`, whatever the
model behind them (`ExportedModel` in-process, or a REST / gRPC client).
`embed_files` stops at a file the model cannot read, naming it;
`embed_files_skipping` leaves such files out, as training does
(`tfdnc.data.validation`), and says which and why.

Examples:
    >>> from tfdnc.serving import ExportedModel
    >>> entries = [("cat/1.jpg", "gallery/cat/1.jpg")]
    >>> embed_files(ExportedModel("exports/dnc"), entries, "serving_default", "embeddings", 32).shape
    (1, 64)
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np

from tfdnc.data.validation import one_line
from tfdnc.exporting import contract
from tfdnc.serving.errors import ServingError
from tfdnc.serving.images import read_image_bytes


def embed_files(model, entries, signature, output, batch_size) -> np.ndarray:
    """Embeds files in batches; a bad image is reported by its file name."""
    return run_files(model, entries, signature, batch_size)[output].astype(np.float32)


def embed_files_skipping(model, entries, signature, output, batch_size):
    """`embed_files` that leaves out the images the model cannot read.

    Returns (embeddings, kept entries, skipped) where row i of the
    embeddings belongs to kept[i] (embeddings is None when nothing was
    kept), and skipped lists (path, reason) of each file left out, in order.

    Examples:
        >>> from tfdnc.serving import ExportedModel
        >>> model = ExportedModel("exports/dnc")
        >>> _ = open("broken.jpg", "w").write("not an image")
        >>> entries = [("cat/1.jpg", "gallery/cat/1.jpg"), ("broken.jpg", "broken.jpg")]
        >>> vectors, kept, skipped = embed_files_skipping(model, entries, "serving_default", "embeddings", 32)
        >>> for path, reason in skipped: print(f"skipped {path}: {reason}")
        skipped broken.jpg: ...
    """
    kept, skipped = [], []
    parts = []
    for start in range(0, len(entries), batch_size):
        batch = entries[start : start + batch_size]
        contents = read_files(batch)
        try:
            parts.append(model.predict({contract.IMAGE_BYTES: contents}, signature)[output])
            kept.extend(batch)
            continue
        except ServingError as err:
            if err.code != "INVALID_ARGUMENT":
                raise
        # A request with a bad image fails as a whole: the batch again, image by image.
        for entry, one in zip(batch, contents):
            try:
                parts.append(model.predict({contract.IMAGE_BYTES: np.array([one], dtype=object)}, signature)[output])
                kept.append(entry)
            except ServingError as single:
                if single.code != "INVALID_ARGUMENT":
                    raise
                skipped.append((entry[1], short_reason(single.details)))
    return (np.concatenate(parts).astype(np.float32) if parts else None), kept, skipped


def report_skipped(prog: str, skipped: Sequence[tuple[str, str]], total: int) -> None:
    """One stderr line per file left out (`PROG: skipped PATH: REASON`, as training's skipped.txt), then a count."""
    for path, reason in skipped:
        print(f"{prog}: skipped {one_line(path)}: {one_line(reason)}", file=sys.stderr)
    if skipped:
        print(f"{prog}: skipped {len(skipped)} of {total} image files the model cannot read", file=sys.stderr)


def short_reason(details: str) -> str:
    """The first line of a server's error, without TensorFlow's graph node suffix (`[[{{node ...}}]]`)."""
    line = str(details).strip().splitlines()[0] if str(details).strip() else "the model refused it"
    reason = line.split("\t [[")[0].split(" [[")[0].strip()
    if reason.startswith("assertion failed: [") and reason.endswith("]"):  # a tf.debugging.Assert's message
        reason = reason[len("assertion failed: [") : -1]
    return reason or line


def run_files(model, entries, signature, batch_size) -> dict[str, np.ndarray]:
    """Runs `signature` on image files in batches; outputs concatenated.

    A request with a bad image fails as a whole; the batch is then retried
    image by image so the error names the file.
    """
    parts = []
    for start in range(0, len(entries), batch_size):
        batch = entries[start : start + batch_size]
        contents = read_files(batch)
        try:
            parts.append(model.predict({contract.IMAGE_BYTES: contents}, signature))
        except ServingError as err:
            if err.code == "INVALID_ARGUMENT":
                name_bad_image(model, batch, contents, signature)
            raise
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def name_bad_image(model, entries, contents, signature) -> None:
    """Runs `signature` on each image alone; raises ValueError naming the first that fails."""
    for (_, path), one in zip(entries, contents):
        try:
            model.predict({contract.IMAGE_BYTES: np.array([one], dtype=object)}, signature)
        except ServingError as single:
            raise ValueError(f"cannot process image file {path!r}: {single.details}") from None


def read_files(entries) -> np.ndarray:
    """The encoded bytes of each (id, path) entry, as the object array a request carries."""
    return np.array([read_image_bytes(path) for _, path in entries], dtype=object)
