"""Evaluate a trained model under its benchmark's protocol.

    python -m tfdnc.evaluate RUN_DIR_OR_EXPORT [--dataset NAME] [--data-dir DIR]

RUN_DIR_OR_EXPORT is one of:

- a run directory written by `python train.py` (its `model.keras`; the data
  set, data directory, image sizes and box cropping default to its
  `config.json`);
- a `.keras` model file (with `config.json` beside it, or `--image-size`);
- a SavedModel export (`BASE/NAME/VERSION`, or `BASE/NAME` for its latest
  version), embedded through its `embed_pixels` signature; image sizes come
  from the export's `assets.extra/tfdnc_export.json`.

Test images go through the evaluation transform (`eval_transform`: resize
the shorter side, centre crop), are embedded with a progress bar, and
evaluated with the data set's protocol (`tfdnc.protocols`). The table is
printed and the results written as JSON (default:
`RUN_DIR/evaluation_<dataset>.json`, or `evaluation_<dataset>.json` in the
working directory for exports).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tfdnc.datasets.base import ImageSet

_EXPORT_METADATA = os.path.join("assets.extra", "tfdnc_export.json")


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
    handle: object | None = None  # keeps a loaded SavedModel's variables alive

    def embed(self, image_set: ImageSet, batch_size: int = 128, progress: bool = True) -> np.ndarray:
        """Embeddings (N, d) of `image_set` in order, under the evaluation transform."""
        from tfdnc.data.pipeline import make_eval_dataset

        dataset = make_eval_dataset(image_set, self.image_size, self.resize_size, batch_size=batch_size)
        batches = math.ceil(len(image_set) / batch_size)
        out = []
        for images in _progress(dataset, progress, f"embedding {image_set.name or 'images'}", batches):
            out.append(np.asarray(self.embed_batch(images), dtype=np.float32))
        if not out:
            raise ValueError(f"embed: image set {image_set.name!r} is empty")
        return np.concatenate(out)


def load_embedder(path: str, image_size: int | None = None, resize_size: int | None = None) -> Embedder:
    """Loads a run directory, `.keras` file or SavedModel export for evaluation.

    `image_size` / `resize_size` override what the run's config or the
    export's metadata say.

    Example:
    >>> embedder = load_embedder("runs/default")
    >>> embeddings = embedder.embed(splits.test)
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"evaluate: {path!r} does not exist")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "model.keras")):
        return _load_export(path, image_size, resize_size)
    model_file = os.path.join(path, "model.keras") if os.path.isdir(path) else path
    config_file = os.path.join(os.path.dirname(os.path.abspath(model_file)), "config.json")
    config = None
    if os.path.isfile(config_file):
        from tfdnc.config import TrainConfig

        config = TrainConfig.load(config_file)
    if image_size is None:
        if config is None:
            raise ValueError(
                f"evaluate: no config.json beside {model_file!r}; pass --image-size (and --resize-size)"
            )
        image_size = config.image_size
        resize_size = resize_size or config.eval_resize
    from tfdnc.exporting import load_keras_model
    import tensorflow as tf

    model = load_keras_model(model_file)
    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return Embedder(
        embed_batch=lambda images: call(images).numpy(),
        image_size=int(image_size),
        resize_size=int(resize_size or image_size),
        kind="keras",
        source=model_file,
        config=config,
        model=model,
    )


def _load_export(path: str, image_size: int | None, resize_size: int | None) -> Embedder:
    import tensorflow as tf

    from tfdnc.exporting import contract, resolve_version_dir

    try:
        version_dir = resolve_version_dir(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"evaluate: {path!r} is neither a run directory (no model.keras) nor a SavedModel export ({exc})"
        ) from None
    metadata_file = os.path.join(version_dir, _EXPORT_METADATA)
    metadata = {}
    if os.path.isfile(metadata_file):
        with open(metadata_file) as f:
            metadata = json.load(f)
    image_size = image_size or metadata.get("image_size")
    if image_size is None:
        raise ValueError(f"evaluate: {metadata_file!r} is missing; pass --image-size (and --resize-size)")
    resize_size = resize_size or metadata.get("resize_size") or image_size
    loaded = tf.saved_model.load(version_dir)
    if contract.EMBED_PIXELS not in loaded.signatures:
        raise ValueError(
            f"evaluate: the export {version_dir!r} has no {contract.EMBED_PIXELS!r} signature "
            f"(it has {sorted(loaded.signatures)})"
        )
    signature = loaded.signatures[contract.EMBED_PIXELS]

    def embed_batch(images):
        return signature(**{contract.PIXELS: tf.convert_to_tensor(images, tf.float32)})[contract.EMBEDDINGS].numpy()

    return Embedder(embed_batch, int(image_size), int(resize_size), "savedmodel", version_dir, handle=loaded)


def evaluate_model(
    embedder: Embedder,
    dataset: str,
    data_dir: str | None = None,
    use_boxes: bool = False,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
    **dataset_options,
):
    """Loads `dataset`, embeds its evaluation images and runs its protocol.

    Returns:
        A `tfdnc.protocols.ProtocolResult`.
    """
    from tfdnc.datasets import load_dataset
    from tfdnc.protocols import run_protocol

    splits = load_dataset(dataset, data_dir, use_boxes=use_boxes, **dataset_options)
    return run_protocol(
        splits,
        lambda image_set: embedder.embed(image_set, batch_size=batch_size, progress=progress),
        seed=seed,
        progress=progress,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tfdnc.evaluate",
        description="Evaluate a run directory, .keras file or SavedModel export with its benchmark's protocol.",
    )
    parser.add_argument("model", metavar="RUN_DIR_OR_EXPORT",
                        help="run directory, .keras file, or SavedModel export (BASE/NAME[/VERSION])")
    parser.add_argument("--dataset", help="data set name (default: the run's config.json)")
    parser.add_argument("--data-dir", help="data set location (default: the run's config.json)")
    parser.add_argument("--use-boxes", action=argparse.BooleanOptionalAction, default=None,
                        help="crop CUB / CARS images to their bounding boxes (default: as trained)")
    parser.add_argument("--image-size", type=int, help="centre-crop side (default: the run's / export's)")
    parser.add_argument("--resize-size", type=int, help="shorter side before the crop (default: as trained)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="k-means seed for NMI / F1 (and VehicleID's split)")
    parser.add_argument("--output", help="JSON file to write (default: RUN_DIR/evaluation_<dataset>.json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise SystemExit("evaluate: --batch-size must be >= 1")
    started = time.perf_counter()
    embedder = load_embedder(args.model, args.image_size, args.resize_size)
    config = embedder.config
    dataset = args.dataset or (config.dataset if config is not None else None)
    if dataset is None:
        raise SystemExit("evaluate: --dataset is required for an export (no config.json to read it from)")
    same_data = config is not None and dataset == config.dataset
    data_dir = args.data_dir or (config.data_dir if same_data else None)
    use_boxes = args.use_boxes if args.use_boxes is not None else bool(same_data and config.use_boxes)
    options = {"seed": args.seed} if dataset == "vehicleid" else {}
    result = evaluate_model(
        embedder, dataset, data_dir, use_boxes=use_boxes, batch_size=args.batch_size,
        seed=args.seed, progress=not args.no_progress, **options,
    )
    print(result.table())

    report = {
        "model": os.path.abspath(args.model),
        "model_kind": embedder.kind,
        "dataset": dataset,
        "data_dir": data_dir,
        "use_boxes": use_boxes,
        "image_size": embedder.image_size,
        "resize_size": embedder.resize_size,
        "seed": args.seed,
        **result.to_dict(),
        "seconds": round(time.perf_counter() - started, 2),
    }
    output = args.output
    if output is None:
        folder = os.path.dirname(embedder.source) if embedder.kind == "keras" else os.getcwd()
        output = os.path.join(folder, f"evaluation_{dataset}.json")
    tmp = f"{output}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, output)
    print(f"wrote {output}")
    return report


def _progress(iterable, enabled: bool, desc: str, total: int):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="batch", file=sys.stderr)


if __name__ == "__main__":
    main()
