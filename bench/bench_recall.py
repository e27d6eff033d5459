"""Recall@K benchmark: `tfdnc.evaluation.recall_at_k` vs a faiss `IndexFlatIP` search.

All-vs-all Recall@{1,2,4,8} on N clustered, L2-normalised embeddings. Each
method runs in its own subprocess (so its peak memory can be read), the two
alternate, and the best of `--repeats` is reported. Peak extra memory = the
process's peak resident set during the run (VmHWM, reset through
/proc/self/clear_refs just before) minus its resident set before it (after
imports, data and a warm-up).

    python bench/bench_recall.py                         # 60,000 x 128
    python bench/bench_recall.py --d 512 --methods tfdnc  # memory at 512 dims
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KS = (1, 2, 4, 8)


def embeddings(n, d, classes, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    centres = rng.normal(size=(classes, d)).astype(np.float32)
    x = centres[labels] + 2.0 * rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def reset_peak_rss() -> None:
    """Resets VmHWM to the current resident set (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def rss_mb(field: str = "VmHWM") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_faiss(x, y):
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, idx = index.search(x, max(KS) + 1)
    # drop the query itself (its own row), else the last neighbour
    self_hit = idx == np.arange(len(x))[:, None]
    self_hit[~self_hit.any(1), -1] = True
    idx = idx[~self_hit].reshape(len(x), max(KS))
    rel = y[idx] == y[:, None]
    # like tfdnc (and pytorch-metric-learning): a query alone in its class is left out
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    valid = counts[inverse] > 1
    return {k: float(rel[valid, :k].any(1).mean()) for k in KS}


def run_tfdnc(x, y, rank=False):
    from tfdnc.evaluation import recall_at_k, retrieval_metrics

    if rank:
        return retrieval_metrics(x, y, KS)
    return recall_at_k(x, y, KS)


def child(args):
    sys.path.insert(0, ROOT)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import faiss  # noqa: F401  (both children import both, so baselines match)
    import tensorflow as tf  # noqa: F401

    import tfdnc.evaluation  # noqa: F401

    x, y = embeddings(args.n, args.d, args.classes)
    # warm-up on a small slice: thread pools, TF kernels
    fn = {"faiss": run_faiss, "tfdnc": run_tfdnc, "tfdnc+map@r": lambda a, b: run_tfdnc(a, b, True)}[args.child]
    fn(x[:2000], y[:2000])
    reset_peak_rss()
    before = rss_mb("VmRSS")
    t, c = time.perf_counter(), time.process_time()
    result = fn(x, y)
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    print(json.dumps({"seconds": seconds, "cpu": cpu, "extra_mb": rss_mb("VmHWM") - before, "result": result}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60_000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--classes", type=int, default=600)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--methods", default="faiss,tfdnc,tfdnc+map@r")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)

    methods = args.methods.split(",")
    best = {}
    for _ in range(args.repeats):
        for m in methods:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", m, "--n", str(args.n),
                   "--d", str(args.d), "--classes", str(args.classes)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            if m not in best or res["seconds"] < best[m]["seconds"]:
                best[m] = res
    ref = best.get("faiss", {}).get("seconds")
    print(f"{args.n:,} x {args.d} float32, {args.classes} classes, all-vs-all, K = {KS}; "
          f"{os.cpu_count()} cores; best of {args.repeats}")
    # The machine may be shared: wall time includes waiting for a core, CPU
    # time (all threads of the process) does not.
    print("\n| method | wall s | vs faiss | CPU s | peak extra MB | R@1 | R@8 |\n|---|---|---|---|---|---|---|")
    for m in methods:
        r = best[m]
        ratio = f"{r['seconds'] / ref:.2f}x" if ref else "-"
        res = r["result"]
        r1 = res.get("1", res.get("recall@1"))
        r8 = res.get("8", res.get("recall@8"))
        extra = f", MAP@R {res['map@r']:.4f}" if "map@r" in res else ""
        print(f"| {m} | {r['seconds']:.2f} | {ratio} | {r['cpu']:.1f} | {r['extra_mb']:.0f} | {r1:.4f} | "
              f"{r8:.4f}{extra} |")


if __name__ == "__main__":
    main()
