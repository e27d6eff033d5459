"""python -m tfdnc.report RUN_DIR [options]: writes RUN_DIR/report/index.html."""

from __future__ import annotations

import argparse
import sys



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfdnc report",
        description="Write an HTML report (curves, K and clusters, masks, embedding map, "
                    "retrieval examples) for a training run.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the directory `tfdnc train` wrote")
    parser.add_argument("--output-dir", help="where to write index.html and the PNGs (default: RUN_DIR/report)")
    parser.add_argument("--dataset", help="evaluate on this data set instead of the run's")
    parser.add_argument("--data-dir", help="data set location (default: the run's)")
    parser.add_argument("--projection", choices=("tsne", "pca"), default="tsne",
                        help="2-D projection of the test embeddings (default: tsne)")
    parser.add_argument("--max-points", type=int, default=1500, help="most points on the map")
    parser.add_argument("--map-classes", type=int, default=20, help="classes drawn on the map")
    parser.add_argument("--num-queries", type=int, default=6, help="retrieval examples (rows)")
    parser.add_argument("--top-k", type=int, default=5, help="neighbours shown per query")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="test images embedded per step (default: 128)")
    parser.add_argument("--inline", action="store_true", help="embed the PNGs in the HTML (one file)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of every random choice: map classes, queries, k-means, t-SNE (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> str | int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from tfdnc.report.runinfo import read_run

    try:
        read_run(args.run_dir)  # a wrong path fails here, in one line, before TensorFlow loads
    except (FileNotFoundError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    from tfdnc.report.builder import build_report  # TensorFlow: only once the arguments parsed

    page = build_report(
        args.run_dir, args.output_dir, dataset=args.dataset, data_dir=args.data_dir,
        projection=args.projection, max_points=args.max_points, map_classes=args.map_classes,
        num_queries=args.num_queries, top_k=args.top_k, batch_size=args.batch_size,
        inline=args.inline, seed=args.seed, progress=not args.no_progress,
    )
    print(f"wrote {page}")
    return page


if __name__ == "__main__":
    result = main()
    sys.exit(result if isinstance(result, int) else 0)
