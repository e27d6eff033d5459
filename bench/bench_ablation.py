"""Ablation on the default data: K = 1 vs D&C with fixed vs learnable masks, several seeds.

Each configuration trains `python train.py` in its own process (the default
run's settings unless overridden), and the table reports the test metrics after
training as mean +- standard deviation over the seeds.

    python bench/bench_ablation.py [--seeds 0 1 2] [--epochs 10] [--out runs/ablation]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "K = 1 (no D&C)": ["--k-final", "1"],
    "D&C, fixed masks": ["--k-final", "2", "--mask-mode", "fixed"],
    "D&C, learnable masks": ["--k-final", "2", "--mask-mode", "learnable"],
}
METRICS = [("recall@1", "R@1"), ("recall@2", "R@2"), ("map@r", "MAP@R"), ("nmi", "NMI")]


def run_one(name: str, flags: list[str], seed: int, args) -> dict:
    slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    run_dir = os.path.join(args.out, f"{slug}-seed{seed}")
    metrics_path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(metrics_path) or "after" not in json.load(open(metrics_path)):
        command = [sys.executable, os.path.join(ROOT, "train.py"), *flags, "--seed", str(seed),
                   "--epochs", str(args.epochs), "--run-dir", run_dir, "--no-export", "--verbose", "0",
                   "--eval-every", "1000", *args.extra]
        if os.path.exists(os.path.join(run_dir, "backup")):
            command.append("--resume")
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    metrics = json.load(open(metrics_path))
    return {"before": metrics["before"]["results"]["test"], "after": metrics["after"]["results"]["test"],
            "seconds": metrics["train_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "ablation"))
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="further train.py flags for every run (e.g. --dataset digits)")
    args = parser.parse_args()
    results = {name: [run_one(name, flags, seed, args) for seed in args.seeds] for name, flags in CONFIGS.items()}

    print(f"\nTest metrics after {args.epochs} epochs, mean +- std over seeds {args.seeds} (percent)\n")
    print("| configuration | " + " | ".join(title for _, title in METRICS) + " | train s |")
    print("|---|" + "---|" * (len(METRICS) + 1))
    first = next(iter(results.values()))
    untrained = [np.mean([100 * r["before"][key] for r in first]) for key, _ in METRICS]
    print("| untrained network | " + " | ".join(f"{v:.2f}" for v in untrained) + " | - |")
    for name, runs in results.items():
        cells = []
        for key, _ in METRICS:
            values = np.array([100 * r["after"][key] for r in runs])
            cells.append(f"{values.mean():.2f} +- {values.std(ddof=1) if len(values) > 1 else 0:.2f}")
        seconds = np.mean([r["seconds"] for r in runs])
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds:.0f} |")


if __name__ == "__main__":
    main()
