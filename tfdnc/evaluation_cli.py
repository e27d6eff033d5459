"""The `tfdnc evaluate` command (`python -m tfdnc.evaluation_cli`): a trained model under its benchmark's protocol.

The library parts it strings together: `tfdnc.loading.load_embedder`
(what is on disk -> an `Embedder`) and
`tfdnc.evaluation.protocols.evaluate_dataset` (a named data set + an embed
function -> a `ProtocolResult`).

    tfdnc evaluate RUN_DIR_OR_EXPORT [--dataset NAME] [--data-dir DIR]

RUN_DIR_OR_EXPORT is one of:

- a run directory written by `python train.py` (its `model.keras`; the data
  set, data directory, image sizes and box cropping default to its
  `config.json`);
- a `.keras` model file (with `config.json` beside it, or `--image-size`);
- a SavedModel export (`BASE/NAME/VERSION`, or `BASE/NAME` for its latest
  version), embedded through its `embed_pixels` signature; image sizes come
  from the export's `assets.extra/tfdnc_export.json`, and the data set, data
  directory and box cropping from the `config.json` of the run it records as
  its `source` (`tfdnc export RUN_DIR`), while that run is still there.

Test images go through the evaluation transform (`eval_transform`: resize
the shorter side, centre crop), are embedded with a progress bar, and
evaluated with the data set's protocol (`tfdnc.evaluation.protocols`). The table is
printed and the results written as JSON beside the model, and where is
printed: `RUN_DIR/evaluation_<dataset>.json` for a run directory or a
`.keras` file's folder, `BASE/NAME/VERSION.evaluation_<dataset>.json` for an
export (beside its version folder, as `tfdnc index` puts VERSION.index there;
TF Serving loads only the numbered folders). `--output` writes elsewhere.
"""

from __future__ import annotations

import argparse
import os
import time

from tfdnc.config.flags import positive_int
from tfdnc.utils import write_json
from tfdnc.utils.errors import UserInputError, UserPathError, run_reporting_errors

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfdnc evaluate",
        description="Evaluate a run directory, .keras file or SavedModel export with its benchmark's protocol.",
    )
    parser.add_argument("model", metavar="RUN_DIR_OR_EXPORT",
                        help="run directory, .keras file, or SavedModel export (BASE/NAME[/VERSION])")
    parser.add_argument("--dataset", help="data set name (default: the run's config.json; for an export, that of "
                        "the run it was exported from)")
    parser.add_argument("--data-dir", help="data set location (default: the run's config.json, when --dataset "
                        "is the run's)")
    parser.add_argument("--use-boxes", action=argparse.BooleanOptionalAction, default=None,
                        help="crop CUB / CARS images to their bounding boxes (default: as trained)")
    parser.add_argument("--image-size", type=int, help="centre-crop side (default: the run's / export's)")
    parser.add_argument("--resize-size", type=int, help="shorter side before the crop (default: as trained)")
    parser.add_argument("--batch-size", type=positive_int, default=128,
                        help="images embedded per step (default: 128)")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed for NMI / F1 (and VehicleID's split)")
    parser.add_argument("--output", help="JSON file to write (default: beside the model: "
                        "RUN_DIR/evaluation_<dataset>.json, or BASE/NAME/VERSION.evaluation_<dataset>.json "
                        "for an export)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error in the arguments or data too (not only one line)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Evaluates; a bad path, data set or model raises `UserInputError` naming it (the command: one line, exit 2)."""
    args = build_parser().parse_args(argv)
    check_arguments(args)
    # TensorFlow is imported once the arguments are known good (`--help` stays fast).
    from tfdnc.loading import load_embedder
    from tfdnc.evaluation.protocols import evaluate_dataset

    started = time.perf_counter()
    try:
        embedder = load_embedder(args.model, args.image_size, args.resize_size)
    except (FileNotFoundError, ValueError) as err:  # not a run, .keras file or export tfdnc can read
        if isinstance(err, UserInputError):
            raise
        error = UserPathError if isinstance(err, FileNotFoundError) else UserInputError
        raise error(f"RUN_DIR_OR_EXPORT {args.model!r}: {str(err).removeprefix('evaluate: ')}") from err
    config = embedder.config if embedder.config is not None else exported_run_config(embedder)
    dataset = args.dataset or (config.dataset if config is not None else None)
    if dataset is None:
        raise UserInputError(f"--dataset is required for the export {args.model!r} (the run it was exported "
                             "from, with its config.json, is not there to read it from)")
    same_data = config is not None and dataset == config.dataset
    data_dir = args.data_dir or (config.data_dir if same_data else None)
    use_boxes = args.use_boxes if args.use_boxes is not None else bool(same_data and config.use_boxes)
    options = {"seed": args.seed} if dataset == "vehicleid" else {}
    progress = not args.no_progress
    result = evaluate_dataset(
        dataset, lambda image_set: embedder.embed(image_set, batch_size=args.batch_size, progress=progress),
        data_dir, use_boxes=use_boxes, seed=args.seed, progress=progress, **options,
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
    output = args.output or default_output(embedder, dataset)
    write_json(output, report)
    print(f"wrote {output}")
    return report


def default_output(embedder, dataset: str) -> str:
    """Where the results go without --output: beside the model evaluated (see the module's docstring)."""
    source = os.path.abspath(embedder.source)
    if embedder.kind == "keras":
        return os.path.join(os.path.dirname(source), f"evaluation_{dataset}.json")
    return f"{source.rstrip(os.sep)}.evaluation_{dataset}.json"


def exported_run_config(embedder):
    """The `TrainConfig` of the run an export was made from (its metadata's `source`), or None.

    None when the export does not say, or the run (or .keras file's folder)
    has no config.json any more.
    """
    from tfdnc.config import TrainConfig
    from tfdnc.exporting import contract
    from tfdnc.utils import read_json

    metadata_file = os.path.join(embedder.source, contract.ASSETS_EXTRA, contract.METADATA_FILE)
    if embedder.kind != "savedmodel" or not os.path.isfile(metadata_file):
        return None
    source = read_json(metadata_file, what="export metadata").get("source")
    if not source:
        return None
    folder = source if os.path.isdir(source) else os.path.dirname(source)
    config_file = os.path.join(folder, "config.json")
    return TrainConfig.load(config_file) if os.path.isfile(config_file) else None


def check_arguments(args: argparse.Namespace) -> None:
    """The data set name and paths, before TensorFlow starts and the model loads."""
    from tfdnc.datasets import DATASETS

    if not os.path.exists(args.model):
        raise UserPathError(f"RUN_DIR_OR_EXPORT {args.model!r} does not exist")
    if args.dataset is not None and args.dataset not in DATASETS:
        raise UserInputError(f"--dataset must be one of {', '.join(sorted(DATASETS))}, got {args.dataset!r}")
    if args.data_dir is not None and not os.path.exists(args.data_dir):
        raise UserPathError(f"--data-dir {args.data_dir!r} does not exist")


if __name__ == "__main__":
    import sys

    sys.exit(run_reporting_errors("python -m tfdnc.evaluation_cli", main, debug="--debug" in sys.argv))
