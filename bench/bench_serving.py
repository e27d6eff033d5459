"""Serving speed: exported SavedModel signature vs the Keras model, side by side.

Per-request latency (p50 / p99) and throughput at batch 1 and 32 of
  - `embed_pixels` of the export loaded with tf.saved_model.load (what TF
    Serving runs, minus the network),
  - `serving_default` on PNG bytes (adds decode + eval transform in-graph),
  - the Keras model called directly (`model(x)`, eager),
  - the Keras model under `tf.function` (compiled, the strict baseline for
    pixel input) and
  - Keras on PNG bytes: decode + eval transform per image in Python, then
    the compiled model (the baseline for the bytes signatures),
measured in interleaved rounds so load on the machine hits all alike; plus
the export time. Prints a Markdown table.

    python bench/bench_serving.py                       # small_cnn 64x64, d=128
    python bench/bench_serving.py --backbone resnet50 --image-size 224 --rounds 30
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


def build(args):
    import keras

    from tfdnc.backbones import build_backbone
    from tfdnc.model import DivideAndConquerModel

    keras.utils.set_random_seed(0)
    backbone = build_backbone(args.backbone, (args.image_size, args.image_size, 3))
    return DivideAndConquerModel(backbone, embedding_dim=args.dim, k_max=4, initial_k=4)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=200, help="timed requests per method at batch 1")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--gallery", type=int, default=1000, help="gallery size baked into the export")
    args = parser.parse_args(argv)

    from tfdnc.data.transforms import decode_image, eval_transform
    from tfdnc.exporting import export_model
    from tfdnc.exporting.signatures import encode_png

    model = build(args)
    base = tempfile.mkdtemp(prefix="bench_serving_")
    started = time.perf_counter()
    gallery = (np.random.default_rng(1).normal(size=(args.gallery, args.dim)),
               np.array([f"g{i}" for i in range(args.gallery)]))
    path = export_model(model, base, "bench", image_size=args.image_size, gallery=gallery, warmup=True)
    export_s = time.perf_counter() - started
    started = time.perf_counter()
    loaded = tf.saved_model.load(path)
    load_s = time.perf_counter() - started
    embed_pixels = loaded.signatures["embed_pixels"]
    serving_default = loaded.signatures["serving_default"]
    search = loaded.signatures["search"]
    compiled = tf.function(lambda x: model(x, training=False))

    rng = np.random.default_rng(0)
    rows = []
    for batch in args.batches:
        pixels = tf.constant(rng.uniform(0, 255, (batch, args.image_size, args.image_size, 3)).astype("float32"))
        pngs = tf.constant([encode_png(p.astype(np.uint8)) for p in pixels.numpy()])
        def keras_on_bytes():
            # The Python route to the same answer: decode + eval transform per
            # image (eager), then the compiled Keras model.
            batch_pixels = tf.stack([eval_transform(decode_image(b, 3), args.image_size) for b in pngs])
            return compiled(batch_pixels).numpy()

        search_name = f"SavedModel search (PNG bytes, {args.gallery} gallery, top 10)"
        methods = {
            "SavedModel embed_pixels": lambda: embed_pixels(pixels=pixels)["embeddings"].numpy(),
            "SavedModel serving_default (PNG bytes)": lambda: serving_default(image_bytes=pngs)["embeddings"].numpy(),
            search_name: lambda: search(image_bytes=pngs)["ids"].numpy(),
            "Keras model(x), eager": lambda: model(pixels, training=False).numpy(),
            "Keras model under tf.function": lambda: compiled(pixels).numpy(),
            "Keras on PNG bytes: eager decode + eval_transform, tf.function model": keras_on_bytes,
        }
        # Each SavedModel row is compared with Keras on the same input.
        baselines = {
            "SavedModel embed_pixels": "Keras model under tf.function",
            "SavedModel serving_default (PNG bytes)": "Keras on PNG bytes: eager decode + eval_transform, tf.function model",
            search_name: "Keras on PNG bytes: eager decode + eval_transform, tf.function model",
        }
        reference = methods["Keras model(x), eager"]()
        np.testing.assert_allclose(methods["SavedModel embed_pixels"](), reference, atol=1e-4)
        rounds = max(10, args.rounds if batch == 1 else args.rounds // 4)
        times = {name: [] for name in methods}
        for _ in range(args.warmup):
            for fn in methods.values():
                fn()
        for _ in range(rounds):  # interleaved: every method sees the same machine load
            for name, fn in methods.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        for name, samples in times.items():
            samples = np.array(samples) * 1e3
            rows.append((batch, name, np.percentile(samples, 50), np.percentile(samples, 99),
                         batch / (samples.mean() / 1e3), rounds, baselines.get(name)))

    print(f"model: DivideAndConquerModel({args.backbone}, {args.image_size}x{args.image_size}x3, d={args.dim}); "
          f"TF {tf.__version__}; {os.cpu_count()} CPUs; GPU: {bool(tf.config.list_physical_devices('GPU'))}")
    print(f"export (4 signatures incl. {args.gallery}-item gallery, warm-up records): {export_s:.2f} s; tf.saved_model.load: {load_s:.2f} s\n")
    print("| batch | method | p50 ms | p99 ms | images/s | p50 vs Keras on the same input | p50 vs Keras eager | requests |")
    print("|---|---|---|---|---|---|---|---|")
    for batch, name, p50, p99, throughput, rounds, baseline in rows:
        eager = next(r[2] for r in rows if r[0] == batch and r[1] == "Keras model(x), eager")
        same = next((r[2] for r in rows if r[0] == batch and r[1] == baseline), None)
        versus = f"{p50 / same:.2f}x" if same else ""
        print(f"| {batch} | {name} | {p50:.2f} | {p99:.2f} | {throughput:.0f} | {versus} | "
              f"{p50 / eager:.2f}x | {rounds} |")


if __name__ == "__main__":
    main()
