"""Clustering benchmark: full-data k-means, constrained re-clustering, matching, splitting.

Features: N points around K Gaussian centres (random-but-clustered), in
D dims, L2-normalised like the penultimate features the method clusters.

    python bench/bench_clustering.py                 # 60,000 x 2,048, K = 8
    python bench/bench_clustering.py --n 6000 --d 256  # quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfdnc.clustering import (  # noqa: E402
    cluster_balanced,
    kmeans,
    match_clusters,
    matching_cost,
    split_clusters,
)


def clustered_features(n, d, k, classes, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)).astype(np.float32)
    labels = rng.integers(0, classes, size=n)
    blob = labels % k  # each class lives near one centre
    x = centres[blob] + 1.5 * rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def timed(fn, repeat=1):
    """(wall seconds, CPU seconds of this process), best of `repeat`, and the result."""
    best, out = (float("inf"), float("inf")), None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, (time.perf_counter() - t, time.process_time() - c))
    return best, out


def sets_cost(new, old, k):
    """The naive reference: symmetric differences of Python sets."""
    members_new = [set(np.flatnonzero(new == i).tolist()) for i in range(k)]
    members_old = [set(np.flatnonzero(old == j).tolist()) for j in range(k)]
    return np.array([[len(a ^ b) for b in members_old] for a in members_new])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60_000)
    p.add_argument("--d", type=int, default=2048)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--niter", type=int, default=100)
    p.add_argument("--match-n", type=int, default=1_000_000)
    p.add_argument("--match-k", type=int, default=32)
    p.add_argument("--skip-sets", action="store_true", help="skip the Python-set matching reference")
    p.add_argument("--faiss-threads", type=int, default=None,
                   help="OpenMP threads for faiss (default: all cores)")
    args = p.parse_args(argv)

    import faiss

    if args.faiss_threads:
        faiss.omp_set_num_threads(args.faiss_threads)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
          f"(faiss uses {faiss.omp_get_max_threads()} threads); numpy {np.__version__}, faiss {faiss.__version__}")
    x, y = clustered_features(args.n, args.d, args.k, args.classes)
    rows = []
    kmeans(x[:1000], 2, niter=2)  # warm-up: thread pools, lazy imports

    t, (a, _) = timed(lambda: kmeans(x, args.k, niter=args.niter, seed=0))
    rows.append((f"kmeans faiss, {args.n} x {args.d}, K={args.k}, {args.niter} it", t))
    t, _ = timed(lambda: kmeans(x, args.k, niter=args.niter, seed=0, spherical=True))
    rows.append((f"kmeans faiss spherical, same", t))
    t, _ = timed(lambda: kmeans(x, args.k, niter=args.niter, seed=0, backend="sklearn"))
    rows.append((f"kmeans sklearn (fallback), same", t))
    t, balanced = timed(lambda: cluster_balanced(x, y, args.k, niter=args.niter, seed=0))
    rows.append((f"cluster_balanced (2 classes x 2 images), K={args.k}", t))
    t, _ = timed(lambda: split_clusters(x, y, balanced, args.k, niter=args.niter, seed=0))
    rows.append((f"split_clusters 2-means, K={args.k} -> {2 * args.k}", t))

    rng = np.random.default_rng(1)
    old = rng.integers(0, args.match_k, size=args.match_n)
    new = np.where(rng.random(args.match_n) < 0.2, rng.integers(0, args.match_k, size=args.match_n),
                   rng.permutation(args.match_k)[old])
    t, mapping = timed(lambda: match_clusters(new, old, args.match_k, args.match_k), repeat=3)
    rows.append((f"match_clusters (contingency + Hungarian), N={args.match_n:,}, K={args.match_k}", t))
    if not args.skip_sets:
        t_sets, ref = timed(lambda: sets_cost(new, old, args.match_k))
        assert (ref == matching_cost(new, old, args.match_k, args.match_k)).all()
        rows.append((f"  reference: cost matrix from Python sets, same", t_sets))

    width = max(len(r[0]) for r in rows)
    # The machine is shared: wall time includes waiting for the cores, CPU
    # time (all threads of this process) does not.
    print(f"\n| {'step':<{width}} | wall s | CPU s |\n|{'-' * (width + 2)}|--------|-------|")
    for name, (wall, cpu) in rows:
        print(f"| {name:<{width}} | {wall:6.2f} | {cpu:5.1f} |")


if __name__ == "__main__":
    main()
