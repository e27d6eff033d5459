"""Loading what training or export left on disk for embedding: a run directory, `.keras` file or export.

`load_embedder` is what `python -m tfdnc.evaluation_cli` (`tfdnc evaluate`)
and the report use to turn a run directory, a `.keras` file or a SavedModel
export into an `Embedder`: a function of pixel batches plus the evaluation
image sizes it expects. An export is run through
`tfdnc.serving.local.ExportedModel` (its `embed_pixels` signature), the same
in-process client `tfdnc embed` uses.

Examples:
    >>> embedder = load_embedder("runs/default")          # or "exports/dnc", or "model.keras"
    >>> from tfdnc.datasets import load_dataset
    >>> splits = load_dataset("digits")
    >>> embeddings = embedder.embed(splits.test)            # (N, d) float32
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tfdnc.config import TrainConfig
from tfdnc.datasets.base import ImageSet
from tfdnc.evaluation.embedding import embed_image_set, model_function
from tfdnc.exporting import contract, load_keras_model, resolve_version_dir
from tfdnc.rundir import RunDir
from tfdnc.serving.local import ExportedModel

__all__ = ["Embedder", "load_embedder"]


@dataclass
class Embedder:
    """A loaded model with the evaluation image sizes it expects.

    Attributes:
        embed_batch: float32 (B, S, S, C) pixels in [0, 255] -> (B, d) array.
        image_size: S, the centre-crop side.
        resize_size: the shorter side before the crop.
        kind: "keras" or "savedmodel".
        source: the path it was loaded from.
        config: the run's `TrainConfig` when there is one.
        model: the Keras model (None for exports).
    """

    embed_batch: Callable[[np.ndarray], np.ndarray]
    image_size: int
    resize_size: int
    kind: str
    source: str
    config: object | None = None
    model: object | None = None
    handle: object | None = None  # the export's `ExportedModel` (keeps its variables alive)

    def embed(self, image_set: ImageSet, batch_size: int = 128, progress: bool = True) -> np.ndarray:
        """Embeddings (N, d) of `image_set` in order, under the evaluation transform."""
        if len(image_set) == 0:
            raise ValueError(f"embed: image set {image_set.name!r} is empty")
        return embed_image_set(self.embed_batch, image_set, self.image_size, self.resize_size,
                               batch_size=batch_size, progress=progress)


def load_embedder(path: str, image_size: int | None = None, resize_size: int | None = None) -> Embedder:
    """Loads a run directory, `.keras` file or SavedModel export for evaluation.

    `image_size` / `resize_size` override what the run's config or the
    export's metadata say.

    Examples:
        >>> embedder = load_embedder("runs/default")
        >>> from tfdnc.datasets import load_dataset
        >>> splits = load_dataset("digits")
        >>> embeddings = embedder.embed(splits.test)
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"evaluate: {path!r} does not exist")
    if os.path.isdir(path) and not RunDir(path).has_model():
        return _load_export(path, image_size, resize_size)
    model_file = RunDir(path).model if os.path.isdir(path) else path
    config_file = RunDir(os.path.dirname(os.path.abspath(model_file))).config
    config = None
    if os.path.isfile(config_file):
        config = TrainConfig.load(config_file)
    if image_size is None:
        if config is None:
            raise ValueError(
                f"evaluate: no config.json beside {model_file!r}; pass --image-size (and --resize-size)"
            )
        image_size = config.image_size
        resize_size = resize_size or config.eval_resize
    model = load_keras_model(model_file)
    return Embedder(
        embed_batch=model_function(model),
        image_size=int(image_size),
        resize_size=int(resize_size or image_size),
        kind="keras",
        source=model_file,
        config=config,
        model=model,
    )


def _load_export(path: str, image_size: int | None, resize_size: int | None) -> Embedder:
    try:
        version_dir = resolve_version_dir(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"evaluate: {path!r} is neither a run directory (no model.keras) nor a SavedModel export ({exc})"
        ) from None
    exported = ExportedModel(version_dir)
    metadata = exported.export_metadata
    image_size = image_size or metadata.get("image_size")
    if image_size is None:
        metadata_file = os.path.join(version_dir, contract.ASSETS_EXTRA, contract.METADATA_FILE)
        raise ValueError(f"evaluate: {metadata_file!r} is missing; pass --image-size (and --resize-size)")
    resize_size = resize_size or metadata.get("resize_size") or image_size
    if not exported.has_signature(contract.EMBED_PIXELS):
        raise ValueError(
            f"evaluate: the export {version_dir!r} has no {contract.EMBED_PIXELS!r} signature "
            f"(it has {exported.signature_names})"
        )
    return Embedder(exported.embed_pixels, int(image_size), int(resize_size), "savedmodel", version_dir,
                    handle=exported)
