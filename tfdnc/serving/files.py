"""Signatures run over image files in batches, a bad image named by its file.

Shared by `tfdnc embed` / `tfdnc search` and `tfdnc index`, whatever the
model behind them (`ExportedModel` in-process, or a REST / gRPC client).

Example:
>>> from tfdnc.serving import ExportedModel
>>> entries = [("cat/1.jpg", "gallery/cat/1.jpg")]
>>> embed_files(ExportedModel("exports/dnc"), entries, "serving_default", "embeddings", 32).shape
(1, 128)
"""

from __future__ import annotations

import numpy as np

from tfdnc.exporting import contract
from tfdnc.serving.errors import ServingError
from tfdnc.serving.images import read_image_bytes


def embed_files(model, entries, signature, output, batch_size) -> np.ndarray:
    """Embeds files in batches; a bad image is reported by its file name."""
    return run_files(model, entries, signature, batch_size)[output].astype(np.float32)


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
