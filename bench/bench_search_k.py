"""Per-request k and batch-size warm-up: what they cost an export.

  - export time and warm-up file size with warm-up at batch 1 only and at
    the deployment kit's allowed batch sizes (1, 4, 16, 32, 64);
  - replaying every warm-up record once (what TF Serving does at load);
  - p50 latency of `search` (k fixed at export) against `search_k` at the
    same k and at max_k, on PNG bytes, in interleaved rounds.

    python bench/bench_search_k.py                      # small_cnn 64x64, d=128, 10,000-item gallery
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--gallery", type=int, default=10_000)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--max-k", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args(argv)

    import keras

    from tfdnc.backbones import build_backbone
    from tfdnc.exporting import contract, export_model
    from tfdnc.exporting.signatures import encode_png
    from tfdnc.exporting.warmup import DEFAULT_WARMUP_BATCH_SIZES, read_warmup_requests
    from tfdnc.model import DivideAndConquerModel

    keras.utils.set_random_seed(0)
    backbone = build_backbone("small_cnn", (args.image_size, args.image_size, 3))
    model = DivideAndConquerModel(backbone, embedding_dim=args.dim, k_max=4, initial_k=4)
    rng = np.random.default_rng(1)
    gallery = (rng.normal(size=(args.gallery, args.dim)), np.array([f"g{i}" for i in range(args.gallery)]))
    base = tempfile.mkdtemp(prefix="bench_search_k_")
    print(f"model: small_cnn {args.image_size}x{args.image_size}x3, d={args.dim}; gallery {args.gallery}; "
          f"top_k {args.top_k}, max_k {args.max_k}; TF {tf.__version__}; {os.cpu_count()} CPUs\n")
    print("| warm-up batch sizes | export s | warm-up records | warm-up file KB | replay all records s |")
    print("|---|---|---|---|---|")
    path = None
    for sizes in [(1,), DEFAULT_WARMUP_BATCH_SIZES]:
        started = time.perf_counter()
        path = export_model(model, base, "bench", image_size=args.image_size, gallery=gallery,
                            top_k=args.top_k, max_k=args.max_k, warmup_batch_sizes=sizes)
        export_s = time.perf_counter() - started
        warmup_file = os.path.join(path, contract.ASSETS_EXTRA, contract.WARMUP_FILE)
        logs = read_warmup_requests(warmup_file)
        loaded = tf.saved_model.load(path)
        started = time.perf_counter()
        for log in logs:
            request = log.predict_log.request
            inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
            loaded.signatures[request.model_spec.signature_name](**inputs)
        replay_s = time.perf_counter() - started
        print(f"| {', '.join(map(str, sizes))} | {export_s:.2f} | {len(logs)} | "
              f"{os.path.getsize(warmup_file) / 1024:.1f} | {replay_s:.2f} |")

    loaded = tf.saved_model.load(path)
    search, search_k = loaded.signatures["search"], loaded.signatures["search_k"]
    print("\n| batch | signature | k | p50 ms |")
    print("|---|---|---|---|")
    for batch in (1, 32):
        pngs = tf.constant([encode_png(rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8))
                            for _ in range(batch)])
        calls = {
            ("search", args.top_k): lambda: search(image_bytes=pngs),
            ("search_k", args.top_k): lambda: search_k(image_bytes=pngs, k=tf.fill([batch], args.top_k)),
            ("search_k", args.max_k): lambda: search_k(image_bytes=pngs, k=tf.fill([batch], args.max_k)),
        }
        times = {key: [] for key in calls}
        for _ in range(3):
            for call in calls.values():
                call()
        rounds = max(5, args.rounds // batch * 4) if batch > 1 else args.rounds
        for _ in range(rounds):
            for key, call in calls.items():
                started = time.perf_counter()
                call()["ids"].numpy()
                times[key].append(time.perf_counter() - started)
        for (name, k), values in times.items():
            print(f"| {batch} | {name} | {k} | {1000 * np.median(values):.2f} |")


if __name__ == "__main__":
    main()
