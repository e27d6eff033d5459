"""`tfdnc export`: export a run directory or a .keras file for TF Serving."""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfdnc export",
        description="Export a trained tfdnc model as a TF Serving SavedModel version "
        "(BASE/NAME/VERSION).",
    )
    parser.add_argument("source", help="run directory (model.keras + config.json) or a .keras file")
    parser.add_argument("--base", required=True, help="model base folder TF Serving watches")
    parser.add_argument("--name", required=True, help="model name (folder under --base)")
    parser.add_argument("--version", type=int, default=None,
                        help="integer version (default: next free; never overwrites)")
    parser.add_argument("--gallery", default=None,
                        help="folder of images or .npz (embeddings, ids): adds the `search` signature")
    parser.add_argument("--top-k", type=int, default=10, help="hits returned by `search` (default 10)")
    parser.add_argument("--max-k", type=int, default=None,
                        help="largest k a `search_k` request may ask for (default: --top-k)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="crop side (required for a .keras file; overrides config.json)")
    parser.add_argument("--resize-size", type=int, default=None,
                        help="eval resize of the shorter side (default: image size)")
    parser.add_argument("--no-warmup", action="store_true", help="skip TF Serving warm-up records")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--warmup-batch-sizes", default=None, metavar="N,N,...",
                       help="batch sizes to warm up, e.g. 1,8,32 (default: the kit's allowed_batch_sizes "
                       "1,4,16,32,64)")
    sizes.add_argument("--batching-parameters", default=None, metavar="FILE",
                       help="warm up the batch sizes of this TF Serving batching_parameters file")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="largest image (height x width) a request may send "
                        "(default 40,000,000; 0: no limit)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from tfdnc.exporting.exporter import export_checkpoint, export_model, export_run, load_keras_model
    from tfdnc.exporting.signatures import DEFAULT_MAX_PIXELS
    from tfdnc.exporting.warmup import batching_batch_sizes, check_batch_sizes

    options = {"max_pixels": DEFAULT_MAX_PIXELS if args.max_pixels is None else (args.max_pixels or None),
               "max_k": args.max_k}

    try:
        if args.batching_parameters is not None:
            options["warmup_batch_sizes"] = batching_batch_sizes(args.batching_parameters)
        elif args.warmup_batch_sizes is not None:
            options["warmup_batch_sizes"] = check_batch_sizes(
                args.warmup_batch_sizes.split(","), "--warmup-batch-sizes")
        if os.path.isdir(args.source):
            if args.image_size is None:
                path = export_run(args.source, args.base, args.name, version=args.version,
                                  gallery=args.gallery, warmup=not args.no_warmup, top_k=args.top_k,
                                  **options)
            else:
                model = load_keras_model(os.path.join(args.source, "model.keras"))
                path = export_model(model, args.base, args.name, image_size=args.image_size,
                                    resize_size=args.resize_size, version=args.version,
                                    gallery=args.gallery, top_k=args.top_k,
                                    warmup=not args.no_warmup, source=os.path.abspath(args.source),
                                    **options)
        elif args.source.endswith(".keras"):
            if args.image_size is None:
                raise ValueError("--image-size is required when exporting a .keras file "
                                 "(a run directory's config.json gives it)")
            path = export_checkpoint(args.source, args.base, args.name, args.image_size,
                                     args.resize_size, version=args.version, gallery=args.gallery,
                                     top_k=args.top_k, warmup=not args.no_warmup, **options)
        else:
            raise FileNotFoundError(
                f"{args.source!r} is neither a run directory nor a .keras file"
            )
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0
