"""Scale benchmark: re-clustering a million images, and embedding throughput.

Each clustering configuration runs in a fresh subprocess, so its peak
resident memory (ru_maxrss) is its own: the N x D float32 features plus
what k-means, the Hungarian matching and the 2-means splits add.

    python bench/bench_scale.py                       # N = 100k, 300k, 1M x D = 512, K = 8, 32
    python bench/bench_scale.py --n 1000000 --k 32    # the headline: 1M x 512, K = 32, 100 iterations
    python bench/bench_scale.py --embed-only          # embedding throughput only
    python bench/bench_scale.py --threads 1           # one faiss thread (shared machines)

Features: N unit vectors around 1,000 class centres (10,000 classes), like
the L2-normalised penultimate features the schedule clusters.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def features(n: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors, generated in chunks (no float64 N x D temporary)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, d), dtype=np.float32)
    labels = rng.integers(0, classes, size=n)
    x = np.empty((n, d), np.float32)
    for start in range(0, n, 65536):
        stop = min(start + 65536, n)
        block = centres[labels[start:stop] % 1000] + 1.5 * rng.standard_normal((stop - start, d), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[start:stop] = block
    return x, labels


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def one_clustering(n: int, d: int, k: int, niter: int, classes: int, threads: int = 0) -> dict:
    """Runs in the subprocess: times k-means, Hungarian matching and the 2-means split at (n, d, k)."""
    import faiss

    import scipy.optimize  # noqa: F401 - imported before timing the matching

    from tfdnc.clustering import kmeans, match_clusters, split_clusters

    if threads:
        faiss.omp_set_num_threads(threads)
    x, labels = features(n, d, classes)
    data_gb = peak_gb()
    t, cpu = time.perf_counter(), time.process_time()
    assignments, _ = kmeans(x, k, niter=niter, seed=0, spherical=True)
    kmeans_s = time.perf_counter() - t
    # CPU seconds this process got: on a shared machine wall time overstates the work.
    kmeans_cpu_s = time.process_time() - cpu
    kmeans_gb = peak_gb()
    previous = np.roll(assignments, 1)  # a different clustering to match against
    t = time.perf_counter()
    match_clusters(assignments, np.where(np.arange(n) % 7 == 0, previous, assignments), k, k)
    match_s = time.perf_counter() - t
    half = max(1, k // 2)
    parents = assignments % half
    t = time.perf_counter()
    children = split_clusters(x, labels, parents, half, seed=0, niter=niter)
    split_s = time.perf_counter() - t
    assert children.max() < 2 * half
    return {"n": n, "d": d, "k": k, "niter": niter, "kmeans_s": kmeans_s, "kmeans_cpu_s": kmeans_cpu_s, "match_s": match_s,
            "split_s": split_s, "split_k": half, "data_gb": data_gb, "kmeans_peak_gb": kmeans_gb,
            "peak_gb": peak_gb(), "faiss_threads": faiss.omp_get_max_threads()}


def embedding_throughput(n: int, image_size: int, width: int, batch_size: int) -> dict:
    """Images/s of streaming an in-memory set through small_cnn with `embed_images`."""
    import tensorflow as tf

    from tfdnc.backbones import build_backbone
    from tfdnc.data.pipeline import make_eval_dataset
    from tfdnc.datasets.base import ImageSet
    from tfdnc.evaluation.embedding import embed_images

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, image_size, image_size, 3), dtype=np.uint8)
    train = ImageSet(images=images, labels=np.arange(n) % 100)
    backbone = build_backbone("small_cnn", (image_size, image_size, 3), width=width)
    fn = tf.function(lambda x: backbone(x, training=False))
    warm = make_eval_dataset(train.subset(np.arange(batch_size)), image_size, batch_size=batch_size)
    embed_images(fn, warm, batch_size)
    dataset = make_eval_dataset(train, image_size, batch_size=batch_size)
    t = time.perf_counter()
    out = embed_images(fn, dataset, n)
    seconds = time.perf_counter() - t
    return {"n": n, "image_size": image_size, "width": width, "batch_size": batch_size, "dim": out.shape[1],
            "seconds": seconds, "images_per_s": n / seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    p.add_argument("--k", type=int, nargs="+", default=[8, 32])
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--niter", type=int, default=100)
    p.add_argument("--classes", type=int, default=10_000)
    p.add_argument("--embed-n", type=int, default=4096)
    p.add_argument("--threads", type=int, default=0,
                   help="faiss OpenMP threads (0: faiss default). On a machine shared with other jobs, 1 avoids "
                        "OpenMP spin contention")
    p.add_argument("--embed-only", action="store_true")
    p.add_argument("--no-embed", action="store_true")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--_one", nargs=3, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._one:
        n, d, k = args._one
        print("RESULT " + json.dumps(one_clustering(n, d, k, args.niter, args.classes, args.threads)))
        return 0
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
          f"(shared with other jobs while measured), numpy {np.__version__}")
    rows = []
    if not args.embed_only:
        print("\nRe-clustering (spherical k-means on all points, Hungarian matching, 2-means split of K/2 clusters)")
        print(f"{'N':>9} {'D':>4} {'K':>3} {'iters':>5} {'k-means s':>9} {'CPU s':>7} {'peak GB':>7} "
              f"{'data GB':>7} {'match s':>7} {'split s':>7}")
        for n in args.n:
            for k in args.k:
                cmd = [sys.executable, os.path.abspath(__file__), "--_one", str(n), str(args.d), str(k),
                       "--niter", str(args.niter), "--classes", str(args.classes), "--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode or not line:
                    print(f"{n:>9} {args.d:>4} {k:>3} failed: {proc.stderr[-500:]}")
                    continue
                r = json.loads(line[0][7:])
                rows.append(r)
                print(f"{n:>9} {args.d:>4} {k:>3} {r['niter']:>5} {r['kmeans_s']:>9.1f} {r['kmeans_cpu_s']:>7.1f} "
                      f"{r['peak_gb']:>7.2f} "
                      f"{r['data_gb']:>7.2f} {r['match_s']:>7.3f} {r['split_s']:>7.1f}", flush=True)
    if not args.no_embed:
        r = embedding_throughput(args.embed_n, 64, 32, 256)
        rows.append({"embedding": r})
        print(f"\nEmbedding throughput (tf.data stream -> small_cnn width {r['width']}, "
              f"{r['image_size']}x{r['image_size']}x3, batch {r['batch_size']}, into a preallocated N x {r['dim']} array)")
        print(f"{r['n']} images in {r['seconds']:.1f} s: {r['images_per_s']:.0f} images/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
