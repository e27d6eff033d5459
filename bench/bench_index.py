"""Gallery indexes at a million vectors: build time, memory, queries/s and recall@10 vs exact.

    OMP_WAIT_POLICY=PASSIVE python bench/bench_index.py --n 1000000 --dim 128 \
        --methods exact ivf_flat ivf_pq hnsw milvus --output bench_index_128.jsonl

Data: a Gaussian mixture, not uniform noise (on which every approximate index
looks bad and no real embedding looks like): n / 100 centres drawn from
N(0, I), each vector a centre plus N(0, sigma^2 I) noise (sigma 0.8: cosine
to a same-centre vector ~0.6, to another centre ~0), L2-normalised. Queries
are fresh draws from the same mixture. Exact search (faiss IndexFlatIP) gives
the reference top-10 and the reference speed, on the same batch of queries
(exact search is memory-bound: a smaller batch re-reads the gallery more
often per query, so its queries/s is lower and would flatter the indexes).
The 2 cores are shared, so each row records the load average.

Every index is built and searched through tfdnc.index (FaissIndex /
MilvusIndex), so the figures include tfdnc's id-map lookups. Memory: bytes per
vector of the serialised faiss index (what it holds in RAM), or of the Milvus
Lite database on disk. Each result is appended to --output as one JSON line as
soon as it is measured, so a run cut short keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfdnc.index import FaissIndex, MilvusIndex  # noqa: E402


def mixture(n: int, dim: int, seed: int, centres: np.ndarray, sigma: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        chunk = centres[rng.integers(0, len(centres), stop - start)]
        chunk += sigma * rng.standard_normal(chunk.shape, dtype=np.float32)
        out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth)]))


def timed_search(index, queries, k=10):
    started = time.perf_counter()
    hits = index.search(queries, k)
    return hits.ids, len(queries) / (time.perf_counter() - started)


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def wait_for_milvus_index(index, limit_s: float = 900.0) -> dict:
    """Polls Milvus until its vector index covers every row (it builds in the background).

    Searching before that measures brute force over unindexed segments.
    """
    deadline = time.perf_counter() + limit_s
    while True:
        state = index.client.describe_index(index.collection, "embedding")
        done = (state.get("state") == "Finished" and not state.get("pending_index_rows")
                and state.get("indexed_rows", 0) >= state.get("total_rows", 0))
        if done or time.perf_counter() > deadline:
            return {k: state.get(k) for k in ("state", "indexed_rows", "pending_index_rows", "total_rows")}
        time.sleep(2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--methods", nargs="+", default=["exact", "ivf_flat", "ivf_pq", "hnsw", "milvus"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sigma", type=float, default=0.8)
    parser.add_argument("--output", default="bench_index.jsonl")
    args = parser.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(1, args.n // 100), args.dim)).astype(np.float32)
    started = time.perf_counter()
    gallery = mixture(args.n, args.dim, 1, centres, args.sigma)
    queries = mixture(args.queries, args.dim, 2, centres.copy(), args.sigma)
    print(f"data {args.n} x {args.dim} in {time.perf_counter() - started:.1f} s", flush=True)
    paths = [""] * args.n  # ids only: the figures measure the index, not path strings
    base = {"n": args.n, "dim": args.dim, "queries": args.queries, "threads": args.threads, "sigma": args.sigma}

    def report(row):
        row = {**base, **row, "load_avg_1min": round(os.getloadavg()[0], 1)}
        print(json.dumps(row), flush=True)
        with open(args.output, "a") as f:
            f.write(json.dumps(row) + "\n")

    exact = FaissIndex(args.dim, "flat", max_k=10)
    started = time.perf_counter()
    exact.add(gallery, paths)
    build = time.perf_counter() - started
    truth, exact_qps = timed_search(exact, queries)
    if "exact" in args.methods:
        report({"method": "faiss flat (exact)", "build_s": round(build, 1), "qps": round(exact_qps, 1),
                "speedup": 1.0, "recall@10": 1.0,
                "bytes_per_vector": round(len(faiss.serialize_index(exact.index.index)) / args.n, 1)})
    del exact

    sweeps = {"ivf_flat": ("nprobe", [16, 32, 64, 128]), "ivf_pq": ("nprobe", [16, 32, 64, 128]),
              "hnsw": ("ef_search", [32, 64, 128, 256])}
    for method in [m for m in args.methods if m in sweeps]:
        index = FaissIndex(args.dim, method, max_k=10)
        started = time.perf_counter()
        index.add(gallery, paths)
        build = time.perf_counter() - started
        memory = len(faiss.serialize_index(index.index)) / args.n
        name, values = sweeps[method]
        for value in values:
            setattr(index, name, value)
            found, qps = timed_search(index, queries)
            shape = {k: v for k, v in index.settings().items() if k in ("nlist", "pq_m", "hnsw_m")}
            report({"method": f"faiss {method}", name: value, "build_s": round(build, 1), "qps": round(qps, 1),
                    "speedup": round(qps / exact_qps, 1), "recall@10": round(recall_at_10(found, truth), 4),
                    "bytes_per_vector": round(memory, 1),
                    **shape})
        del index

    if "milvus" in args.methods:
        workdir = tempfile.mkdtemp(prefix="bench-milvus-")
        index = MilvusIndex(args.dim, os.path.join(workdir, "bench.db"), index_type="hnsw", max_k=10)
        started = time.perf_counter()
        index.add(gallery, paths)
        index.client.flush(index.collection)
        indexed = wait_for_milvus_index(index)
        build = time.perf_counter() - started
        for ef in (32, 64, 128, 256):
            index.ef_search = ef
            found, qps = timed_search(index, queries)
            report({"method": "milvus lite hnsw", "ef_search": ef, "build_s": round(build, 1), "qps": round(qps, 1),
                    "speedup": round(qps / exact_qps, 1),
                    "recall@10": round(recall_at_10(found, truth), 4),
                    "bytes_per_vector": round(folder_bytes(workdir) / args.n, 1), "hnsw_m": index.hnsw_m,
                    "index_state": indexed})
        index.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
