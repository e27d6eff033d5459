"""Export a trained embedding model as a TF Serving SavedModel version."""

from __future__ import annotations

import importlib
import json
import os
import time
from typing import Any, Sequence

import tensorflow as tf

import tfdnc
from tfdnc.exporting import contract
from tfdnc.exporting.endpoints import registered_signatures
from tfdnc.exporting.gallery import Gallery
from tfdnc.exporting.signature import Signature
from tfdnc.exporting.signatures import DEFAULT_MAX_PIXELS, ServingGraphs
from tfdnc.exporting.versions import staged_version
from tfdnc.exporting.warmup import (
    DEFAULT_WARMUP_BATCH_SIZES,
    check_batch_sizes,
    warmup_available,
    write_warmup_requests,
)

# Modules whose import registers tfdnc's Keras objects (for load_model).
_CUSTOM_OBJECT_MODULES = (
    "tfdnc.layers", "tfdnc.layers.masks", "tfdnc.losses", "tfdnc.model",
    "tfdnc.backbones",  # BatchNormalization with frozen statistics
)


def export_model(
    model, base: str | os.PathLike, name: str, *, image_size: int, resize_size: int | None = None,
    channels: int | None = None, version: int | None = None, gallery=None, top_k: int = 10,
    max_k: int | None = None, warmup: bool = True,
    warmup_batch_sizes: Sequence[int] = DEFAULT_WARMUP_BATCH_SIZES,
    max_pixels: int | None = DEFAULT_MAX_PIXELS, source: str | None = None,
) -> str:
    """Writes `model` as SavedModel version BASE/NAME/VERSION; returns its path.

    The export has every registered signature its model and gallery allow
    (`tfdnc.exporting.endpoints`), their warm-up requests and metadata.

    Args:
        model: a Keras model taking float (B, H, W, C) pixels in [0, 255] and
            returning (B, d) embeddings (e.g. a `DivideAndConquerModel`).
        base: the model base folder TF Serving is pointed at.
        name: the model name (TF Serving's `name` and folder under `base`).
        image_size, resize_size: the evaluation transform (shorter side to
            `resize_size`, centre crop `image_size`) run in the graph.
        channels: channels images are decoded to; default: the model's.
        version: integer version; default: the next free one. An existing
            version is never overwritten.
        gallery: None, a `Gallery`, an .npz file (`embeddings`, `ids`), a
            folder of images (ids: relative paths) or (embeddings, ids);
            adds the `search` signatures. None: the model's own index, if
            it holds one (`DivideAndConquerModel.index`).
        top_k: how many gallery hits `search` returns (clipped to its size).
        max_k: the largest k a `search_k` request may ask for (default
            `top_k`; clipped to the gallery size).
        warmup: write TF Serving warm-up requests (skipped with a warning
            when `tensorflow-serving-api` is not installed).
        warmup_batch_sizes: one warm-up request per signature and batch
            size (default: the deployment kit's allowed_batch_sizes).
        max_pixels: largest image (height x width) a request may send; None: no limit.
        source: where the model came from, recorded in the export metadata.

    Examples:
        >>> model = tfdnc.load_model("runs/default/model.keras")
        >>> path = export_model(model, "exports", "dnc", image_size=32)  # exports/dnc/<the next version>
    """
    _check_name(name)
    channels = channels if channels is not None else _model_channels(model)
    warmup_batch_sizes = check_batch_sizes(warmup_batch_sizes)
    graphs = ServingGraphs(model, image_size=image_size, resize_size=resize_size, channels=channels,
                           num_learners=_num_learners(model), max_pixels=max_pixels)
    started = time.perf_counter()
    gallery_obj = _load_gallery(model, graphs, gallery)
    if gallery_obj is not None:
        graphs.attach_gallery(gallery_obj, top_k, max_k)
    signatures = [s for s in registered_signatures() if s.available(graphs)]
    archive, functions = _build_archive(model, graphs, signatures)
    with staged_version(os.path.join(os.fspath(base), name), version) as staged:
        archive.write_out(staged.staging, verbose=False)
        extra = os.path.join(staged.staging, contract.ASSETS_EXTRA)
        os.makedirs(extra, exist_ok=True)
        records = _write_warmup(extra, name, graphs, signatures, warmup_batch_sizes) if warmup else 0
        _write_metadata(extra, graphs, signatures, functions, model=name, source=source,
                        warmup_requests=records, warmup_batch_sizes=list(warmup_batch_sizes) if records else [],
                        started=started)
    return staged.path


def export_run(
    run_dir: str | os.PathLike,
    base: str | os.PathLike,
    name: str,
    version: int | None = None,
    gallery=None,
    warmup: bool = True,
    top_k: int = 10,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_k: int | None = None,
    warmup_batch_sizes: Sequence[int] = DEFAULT_WARMUP_BATCH_SIZES,
) -> str:
    """Exports RUN_DIR/model.keras with the image sizes of RUN_DIR/config.json.

    Returns the path of the new version folder (BASE/NAME/VERSION).

    Examples:
        >>> export_run("runs/default", "exports", "dnc")
        'exports/dnc/...'
    """
    from tfdnc.config import TrainConfig

    run_dir = os.fspath(run_dir)
    model_path = os.path.join(run_dir, "model.keras")
    config_path = os.path.join(run_dir, "config.json")
    for path in (model_path, config_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"export: run directory {run_dir!r} has no {os.path.basename(path)} "
                "(give the folder `tfdnc train` wrote, or a .keras file with --image-size)"
            )
    config = TrainConfig.load(config_path)
    model = load_keras_model(model_path)
    return export_model(
        model,
        base,
        name,
        image_size=config.image_size,
        resize_size=config.eval_resize,
        version=version,
        gallery=gallery,
        top_k=top_k,
        max_k=max_k,
        warmup=warmup,
        warmup_batch_sizes=warmup_batch_sizes,
        max_pixels=max_pixels,
        source=os.path.abspath(run_dir),
    )


def export_checkpoint(
    checkpoint: str | os.PathLike,
    base: str | os.PathLike,
    name: str,
    image_size: int,
    resize_size: int | None = None,
    **kwargs: Any,
) -> str:
    """Exports a `.keras` file; the image sizes must be given (no config.json)."""
    checkpoint = os.fspath(checkpoint)
    model = load_keras_model(checkpoint)
    return export_model(
        model, base, name, image_size=image_size, resize_size=resize_size,
        source=os.path.abspath(checkpoint), **kwargs,
    )


def load_keras_model(path: str | os.PathLike):
    """`keras.saving.load_model` with tfdnc's custom objects registered."""
    import keras

    path = os.fspath(path)
    if not path.endswith(".keras") or not os.path.isfile(path):
        raise FileNotFoundError(f"export: {path!r} is not a .keras model file")
    for module in _CUSTOM_OBJECT_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - re-raised naming the file
        raise ValueError(f"export: cannot load Keras model {path!r}: {exc}") from exc


# --- helpers -----------------------------------------------------------------


def _model_channels(model) -> int:
    shape = getattr(model, "image_shape", None)
    if shape is None:
        try:
            shape = model.input_shape[1:]
        except (AttributeError, ValueError):
            shape = None
    if not shape or shape[-1] is None:
        raise ValueError(
            "export: cannot tell the model's image channels; pass `channels=` (1 or 3)"
        )
    return int(shape[-1])


def _num_learners(model) -> int | None:
    count = getattr(model, "num_learners", None)
    return int(count) if count is not None else None


def _check_name(name) -> None:
    if not isinstance(name, str) or not name or os.sep in name or name.startswith("."):
        raise ValueError(f"export: model `name` must be a plain folder name, got {name!r}")


def _eager_embedder(graphs: ServingGraphs):
    fn = tf.function(lambda b: graphs.embed(graphs.decode(b, "gallery")))

    def embed(contents):
        return fn(tf.constant(list(contents), tf.string)).numpy()

    return embed


def _load_gallery(model, graphs: ServingGraphs, gallery) -> Gallery | None:
    """The export's search gallery, embedded by the serving graph; None: no search signatures.

    `gallery` None: the model's own index, if it holds one (`model.index(x, y)`).
    """
    if gallery is None:
        index_gallery = getattr(model, "index_gallery", None)
        gallery = index_gallery() if callable(index_gallery) else None
    if gallery is None:
        return None
    embed_bytes = _eager_embedder(graphs)
    loaded = Gallery.load(gallery, embed_bytes)
    dim = int(embed_bytes([graphs.warmup_image()]).shape[-1])
    if loaded.dim != dim:
        raise ValueError(f"export: gallery embeddings have {loaded.dim} dims, the model's have {dim}")
    return loaded


def _build_archive(model, graphs: ServingGraphs, signatures: Sequence[Signature]):
    """A Keras ExportArchive with one endpoint per signature (and the gallery variables)."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    functions = {
        signature.name: archive.add_endpoint(
            signature.name, signature.function(graphs), input_signature=signature.input_specs(graphs)
        )
        for signature in signatures
    }
    if graphs.gallery is not None:
        archive.add_variable_collection("gallery", graphs.gallery.variables)
    return archive, functions


def _write_warmup(extra: str, name: str, graphs: ServingGraphs, signatures: Sequence[Signature],
                  batch_sizes: Sequence[int]) -> int:
    """Writes assets.extra's warm-up records (one per signature and batch size); returns how many."""
    if not warmup_available():
        import warnings

        warnings.warn(
            "export: tensorflow-serving-api is not installed; no warm-up requests written "
            "(pip install 'tfdnc[serving]')",
            stacklevel=3,
        )
        return 0
    requests = [(s.name, s.warmup_inputs(graphs, size)) for s in signatures for size in batch_sizes]
    return write_warmup_requests(os.path.join(extra, contract.WARMUP_FILE), name, requests)


def _write_metadata(extra: str, graphs: ServingGraphs, signatures: Sequence[Signature], functions: dict,
                    started: float, **fields: Any) -> None:
    """assets.extra/tfdnc_export.json: versions, image settings, each registered signature's fields
    (its values when exported, its `metadata_absent` when not), the signatures' tensors."""
    exported = {s.name for s in signatures}
    metadata = {
        "tfdnc_version": tfdnc.__version__,
        "tensorflow_version": tf.__version__,
        "image_size": graphs.image_size,
        "resize_size": graphs.resize_size,
        "channels": graphs.channels,
        "max_pixels": graphs.max_pixels,
        **fields,
    }
    for signature in registered_signatures():
        metadata.update(signature.metadata(graphs) if signature.name in exported else signature.metadata_absent)
    metadata["signatures"] = _describe_signatures(functions)
    metadata["export_seconds"] = round(time.perf_counter() - started, 3)
    with open(os.path.join(extra, contract.METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)


def _describe_signatures(functions: dict) -> dict:
    """name -> {"inputs"/"outputs": {tensor: {"dtype", "shape"}}}; -1: any size."""

    def spec(tensor_spec):
        dims = [-1 if d is None else int(d) for d in tensor_spec.shape.as_list()]
        return {"dtype": tensor_spec.dtype.name, "shape": dims}

    described = {}
    for endpoint, fn in functions.items():
        concrete = fn.get_concrete_function()
        described[endpoint] = {
            "inputs": {s.name: spec(s) for s in concrete.structured_input_signature[0]},
            "outputs": {k: spec(v) for k, v in concrete.structured_outputs.items()},
        }
    return described
