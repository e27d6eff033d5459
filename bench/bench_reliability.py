"""The issue-12 reproduction on the default data: two kills right after a re-clustering, then --resume.

    python bench/bench_reliability.py --out /tmp/reliability [--epochs 3] [--extra "--steps-per-epoch 20"]

Runs train.py on the default settings (shapes, multi-similarity + Symm,
K 1 -> 4) with `--epochs 3 --recluster-every 1`:

1. uninterrupted;
2. SIGKILLed right after "re-clustered after epoch 2" (the test-only kill
   point `after_recluster@2`), resumed and killed at the same line again,
   then resumed to the end.

It prints each run's history K and final NMI / MAP@R / R@1 and whether the
two are equal. Before the backup generations (issue 12) run 2 ended with
K [1, 1, 2] and NMI 19.0 against 30.3; now both runs must be the same.
On the default data it takes a few minutes; CI runs the tiny version
(tests/test_reliability.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(run_dir: str, extra: list[str], kill_at: str | None = None) -> int:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    env.pop("TFDNC_TEST_KILL_AT", None)
    if kill_at:
        env["TFDNC_TEST_KILL_AT"] = kill_at
    argv = [sys.executable, os.path.join(ROOT, "train.py"), "--run-dir", run_dir, "--no-export", "--verbose", "2",
            *extra]
    return subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def summary(run_dir: str) -> dict:
    history = json.load(open(os.path.join(run_dir, "history.json")))
    after = json.load(open(os.path.join(run_dir, "metrics.json")))["after"]["results"]
    split = next(iter(after))
    return {"K": [h["K"] for h in history], "nmi": after[split]["nmi"], "map@r": after[split]["map@r"],
            "recall@1": after[split]["recall@1"], "losses": [h["loss"] for h in history]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the two run directories")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--extra", default="", help="more train.py flags, one string")
    args = parser.parse_args()
    flags = ["--epochs", str(args.epochs), "--recluster-every", "1", *shlex.split(args.extra)]
    start = time.perf_counter()
    reference, killed = os.path.join(args.out, "uninterrupted"), os.path.join(args.out, "killed")
    assert train(reference, flags) == 0
    assert train(killed, flags, kill_at="after_recluster@2") == -9
    assert train(killed, flags + ["--resume"], kill_at="after_recluster@2") == -9
    assert train(killed, flags + ["--resume"]) == 0
    a, b = summary(reference), summary(killed)
    for name, s in (("uninterrupted", a), ("killed twice after re-clustering, resumed", b)):
        print(f"{name:45s} K {s['K']}  NMI {100 * s['nmi']:.1f}  MAP@R {100 * s['map@r']:.1f}  "
              f"R@1 {100 * s['recall@1']:.1f}")
    print(f"equal: {a == b}   ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
