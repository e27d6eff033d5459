#!/usr/bin/env python
"""Benchmark: does self-supervised pretraining help Divide & Conquer, and does the policy?

For each seed, three Divide & Conquer runs (`train.py`) on the default data
(MNIST sample; train classes 0-4, test classes 5-9) differ only in the
backbone's initial weights:

- random: random initialisation;
- uniform: `python -m tfdnc.pretrain --sampling uniform` (jigsaw, permutations
  drawn uniformly);
- policy: `python -m tfdnc.pretrain --sampling policy` (permutations drawn by
  the REINFORCE-trained policy),

with the same pretraining budget (steps x batch) for both pretrained
variants. Pretraining uses the train split's images only, without labels.
Prints one table (mean +- std over seeds, then per seed) and writes
`OUT_DIR/results.json`. Finished runs are reused, so an interrupted benchmark
continues where it stopped.

    python bench/bench_pretrain.py                 # ~25 min on 2 CPU cores
    python bench/bench_pretrain.py --quick         # smoke test, ~3 min
    python bench/bench_pretrain.py --pretext-only --num-permutations 1000
        # uniform vs policy on the pretext task alone (held-out accuracy), ~12 min
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
VARIANTS = ("random", "uniform", "policy")


def _run(cmd: list[str], log_path: str) -> None:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")


def pretrain(args, seed: int, sampling: str, out_dir: str) -> dict:
    weights = os.path.join(out_dir, f"pretrain_{sampling}_s{seed}.weights.h5")
    run_dir = os.path.join(out_dir, f"pretrain_{sampling}_s{seed}")
    summary_path = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(summary_path) or not os.path.isfile(weights):
        start = time.time()
        _run([sys.executable, "-m", "tfdnc.pretrain", "--dataset", args.dataset,
              "--sampling", sampling, "--seed", str(seed),
              "--num-permutations", str(args.num_permutations), "--heldout", str(args.heldout),
              "--epochs", str(args.pretrain_epochs), "--steps-per-epoch", str(args.pretrain_steps),
              "--batch-size", str(args.batch_size), "--block-steps", str(args.block_steps),
              "--out", weights, "--run-dir", run_dir, "--verbose", "2"],
             os.path.join(out_dir, f"pretrain_{sampling}_s{seed}.log"))
        print(f"  pretrain {sampling:7s} seed {seed}: {time.time() - start:6.1f} s", flush=True)
    with open(summary_path) as f:
        summary = json.load(f)
    return {"weights": weights, **summary}


def train_dc(args, seed: int, variant: str, weights: str | None, out_dir: str) -> dict:
    run_dir = os.path.join(out_dir, f"dc_{variant}_s{seed}")
    metrics_path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(metrics_path):
        start = time.time()
        cmd = [sys.executable, "train.py", "--dataset", args.dataset, "--seed", str(seed),
               "--epochs", str(args.dc_epochs), "--run-dir", run_dir, "--no-export",
               "--eval-every", str(args.dc_epochs), "--verbose", "2"]
        if weights is not None:
            cmd += ["--backbone-weights", weights]
        _run(cmd, os.path.join(out_dir, f"dc_{variant}_s{seed}.log"))
        print(f"  train    {variant:7s} seed {seed}: {time.time() - start:6.1f} s", flush=True)
    with open(metrics_path) as f:
        metrics = json.load(f)
    return {"r1_before": metrics["before"]["results"]["test"]["recall@1"],
            "r1_after": metrics["after"]["results"]["test"]["recall@1"],
            "map_r_after": metrics["after"]["results"]["test"]["map@r"]}


def _fmt(values, scale=100.0, digits=1) -> str:
    values = np.asarray(values, dtype=np.float64) * scale
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--pretrain-steps", type=int, default=100, help="steps per pretraining epoch")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-permutations", type=int, default=100)
    p.add_argument("--heldout", type=int, default=1000)
    p.add_argument("--block-steps", type=int, default=20)
    p.add_argument("--dc-epochs", type=int, default=4)
    p.add_argument("--out-dir", default="runs/bench_pretrain")
    p.add_argument("--quick", action="store_true", help="tiny budgets, one seed (smoke test)")
    p.add_argument("--pretext-only", action="store_true",
                   help="compare uniform and policy sampling on the pretext task only")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.pretrain_epochs, args.pretrain_steps = args.seeds[:1], 1, 20
        args.block_steps, args.dc_epochs, args.heldout = 10, 1, 200
        args.out_dir = args.out_dir.rstrip("/") + "_quick"
    out_dir = os.path.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)

    start = time.time()
    if args.pretext_only:
        return _pretext_only(args, out_dir, start)
    rows = {v: [] for v in VARIANTS}
    for seed in args.seeds:
        pre = {s: pretrain(args, seed, s, out_dir) for s in ("uniform", "policy")}
        for variant in VARIANTS:
            weights = None if variant == "random" else pre[variant]["weights"]
            result = train_dc(args, seed, variant, weights, out_dir)
            if variant != "random":
                result.update(pretext_accuracy=pre[variant]["heldout_accuracy"],
                              pretrain_seconds=pre[variant]["train_seconds"],
                              max_sampling_prob=pre[variant].get("final_max_sampling_prob"))
            rows[variant].append({"seed": seed, **result})
    total = time.time() - start

    steps = args.pretrain_epochs * args.pretrain_steps
    print(f"\nDivide & Conquer on {args.dataset} (test classes, R@1 %), {len(args.seeds)} seed(s); "
          f"pretraining {steps} steps x {args.batch_size} images, N = {args.num_permutations} "
          f"permutations; D&C {args.dc_epochs} epochs")
    print("| init | pretext held-out acc. % | pretrain s | policy's top prob. % (uniform "
          f"{100 / args.num_permutations:.1f}) | R@1 before D&C | R@1 after D&C | MAP@R after |")
    print("|---|---|---|---|---|---|---|")
    for v in VARIANTS:
        r = rows[v]
        acc = _fmt([x["pretext_accuracy"] for x in r]) if v != "random" else "-"
        sec = _fmt([x["pretrain_seconds"] for x in r], 1.0, 0) if v != "random" else "-"
        top = _fmt([x["max_sampling_prob"] for x in r], digits=2) if v == "policy" else "-"
        print(f"| {v} | {acc} | {sec} | {top} | {_fmt([x['r1_before'] for x in r])} | "
              f"{_fmt([x['r1_after'] for x in r])} | {_fmt([x['map_r_after'] for x in r])} |")
    print("\nper seed, R@1 after D&C %:")
    print("| seed | " + " | ".join(VARIANTS) + " |")
    print("|---" * (len(VARIANTS) + 1) + "|")
    for i, seed in enumerate(args.seeds):
        print(f"| {seed} | " + " | ".join(f"{100 * rows[v][i]['r1_after']:.1f}" for v in VARIANTS) + " |")
    print(f"\ntotal wall time {total / 60:.1f} min (finished runs reused)")
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows, "seconds": total}, f, indent=1)
    return 0


def _pretext_only(args, out_dir: str, start: float) -> int:
    rows = {s: [pretrain(args, seed, s, out_dir) for seed in args.seeds]
            for s in ("uniform", "policy")}
    steps = args.pretrain_epochs * args.pretrain_steps
    print(f"\nPretext task on {args.dataset}: held-out permutation accuracy after {steps} steps x "
          f"{args.batch_size} images, N = {args.num_permutations}, {len(args.seeds)} seed(s)")
    print(f"| sampling | held-out acc. % | held-out loss | policy's top prob. % (uniform "
          f"{100 / args.num_permutations:.2f}) | seconds |")
    print("|---|---|---|---|---|")
    for s, r in rows.items():
        top = _fmt([x["final_max_sampling_prob"] for x in r], digits=2) if s == "policy" else "-"
        print(f"| {s} | {_fmt([x['heldout_accuracy'] for x in r])} | "
              f"{_fmt([x['heldout_loss'] for x in r], 1.0, 3)} | {top} | "
              f"{_fmt([x['train_seconds'] for x in r], 1.0, 0)} |")
    print("| seed | " + " | ".join(f"{s} acc. %" for s in rows) + " |")
    print("|---|---|---|")
    for i, seed in enumerate(args.seeds):
        print(f"| {seed} | " + " | ".join(f"{100 * rows[s][i]['heldout_accuracy']:.1f}"
                                        for s in rows) + " |")
    print(f"\ntotal wall time {(time.time() - start) / 60:.1f} min (finished runs reused)")
    with open(os.path.join(out_dir, "results_pretext.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
