"""Measurements of issue 20's method items: epoch-to-epoch swings, the emulated papers' regime, mask division.

Every measurement is a few `train.py` runs (one process each, evaluated
after every epoch) whose history.json this script reads. Runs already in
--out are reused, so an interrupted measurement continues where it stopped.

    python bench/bench_method.py swing  [--dataset shapes] [--epochs 20] [--steps 40] [--extra "--k-final 2"]
    python bench/bench_method.py regime [--epochs 12] [--steps 40]

`swing` compares, on one data set, today's settings with a learning-rate
schedule (cosine after a 1-epoch warm-up), BatchNorm momentum 0.99 and an
average of the weights (--ema): per-epoch test MAP@R, the mean absolute
change between consecutive epochs over the last five, and the gap between
the final and the best epoch.

`regime` emulates the papers' regime without ImageNet: a supervised K = 1
run pretrains the backbone on a *source* set (shapes drawn with seed 1,
without any class that is one of the target's test classes: 288 classes),
then K = 1 and D&C (learnable and fixed masks) train on the
target (`shapes`, seed 0) from that backbone, with frozen BatchNorm
statistics, at the papers' ratio (network 1e-5-like, masks 100x) and at
tfdnc's default rates, and most epochs at the final K. It reports MAP@R and
the masks' mean pairwise cosine and switched-off share at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SWING_VARIANTS = {
    "today (constant lr, BN momentum 0.9)": [],
    "cosine schedule, 1-epoch warm-up": ["--lr-schedule", "cosine", "--warmup-epochs", "1"],
    "BatchNorm momentum 0.99": ["--batchnorm-momentum", "0.99"],
    "EMA of the weights (0.99 per step)": ["--ema", "--ema-momentum", "0.99"],
    "cosine + EMA": ["--lr-schedule", "cosine", "--warmup-epochs", "1", "--ema", "--ema-momentum", "0.99"],
    # the re-clustering jolt's control: no re-clustering at all
    "K = 1 (no re-clustering), constant lr": ["--k-final", "1"],
    "K = 1, cosine schedule": ["--k-final", "1", "--lr-schedule", "cosine", "--warmup-epochs", "1"],
}


def train(run_dir: str, args: list[str]) -> list[dict]:
    """Runs train.py into `run_dir` unless it finished there before; returns its history."""
    metrics = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(metrics):
        if os.path.isdir(run_dir):
            import shutil

            shutil.rmtree(run_dir)
        env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
        command = [sys.executable, os.path.join(ROOT, "train.py"), "--verbose", "2", "--no-export",
                   "--run-dir", run_dir, *args]
        print("$", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    with open(os.path.join(run_dir, "history.json")) as f:
        return json.load(f)


def summary(history: list[dict]) -> dict:
    maps = [100 * h["val_map@r"] for h in history if "val_map@r" in h]
    tail = maps[-6:]
    second_half = np.diff(maps[len(maps) // 2 - 1:])
    return {"map_per_epoch": [round(m, 2) for m in maps], "final": maps[-1], "best": max(maps),
            "gap": max(maps) - maps[-1], "last3": float(np.mean(maps[-3:])),
            "swing": float(np.mean(np.abs(np.diff(tail)))) if len(tail) > 1 else 0.0,
            # the largest fall from one epoch to the next in the second half of the run
            "drop": float(max(0.0, -second_half.min())) if len(second_half) else 0.0,
            "mask_cosine": history[-1].get("mask_cosine"), "mask_off_share": history[-1].get("mask_off_share")}


def swing(args) -> None:
    base = ["--dataset", args.dataset, "--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps),
            "--eval-every", "1", "--seed", str(args.seed), *shlex.split(args.extra)]
    rows = []
    for i, (name, extra) in enumerate(SWING_VARIANTS.items()):
        if args.only and i not in args.only:
            continue
        slug = "".join(c if c.isalnum() else "_" for c in name)[:40]
        s = summary(train(os.path.join(args.out, f"swing_{args.dataset}_{args.seed}_{slug}"), base + extra))
        rows.append((name, s))
    print(f"\n{args.dataset}, {args.epochs} epochs x {args.steps} steps, seed {args.seed}: test MAP@R (%)\n")
    print("| setting | final | best | final - best | last 3 | mean abs. change, last 5 epochs | "
          "largest fall, 2nd half |")
    print("|---|---|---|---|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s['final']:.2f} | {s['best']:.2f} | {-s['gap']:.2f} | {s['last3']:.2f} | "
              f"{s['swing']:.2f} | {s['drop']:.2f} |")
    print()
    for name, s in rows:
        print(f"{name}: {' '.join(f'{m:.1f}' for m in s['map_per_epoch'])}")


def _prototypes(seed: int, num_classes: int = 400, num_families: int = 4) -> dict[int, tuple]:
    """class id -> (family, prototype) of `load_shapes(num_classes, seed=seed)`, drawn as it draws them."""
    from tfdnc.datasets import shapes

    class_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
    classes = np.arange(num_classes)
    out = {}
    for f in range(num_families):
        members = classes[classes % num_families == f]
        rows = shapes._PROTOTYPES[shapes.FAMILIES[f]](class_rng, len(members))
        out.update({int(c): (f, tuple(np.round(r, 6))) for c, r in zip(members, rows)})
    return out


def write_source_folder(folder: str, seed: int) -> str:
    """Shapes drawn with another seed, minus every class that is one of the target's test classes (once).

    The shape and texture families hold about 115 classes each, so another
    seed redraws many of seed 0's classes: the source keeps none of the
    target's 200 test classes, but some of its training classes (as ImageNet
    holds birds for CUB). The last 40 kept classes form the folder's test split.
    """
    done = os.path.join(folder, "DONE")
    if os.path.isfile(done):
        return folder
    from PIL import Image

    from tfdnc.datasets.shapes import load_shapes

    target_test = {v for c, v in _prototypes(0).items() if c >= 200}
    keep = sorted(c for c, v in _prototypes(seed).items() if v not in target_test)
    held_out = set(keep[-40:])
    splits = load_shapes(num_classes=400, images_per_class=12, seed=seed)
    images = np.concatenate([splits.train.images, splits.test.images])
    labels = np.concatenate([splits.train.labels, splits.test.labels])
    for i, (image, label) in enumerate(zip(images, labels)):
        if int(label) not in keep:
            continue
        part = "test" if int(label) in held_out else "train"
        path = os.path.join(folder, part, f"c{int(label):04d}", f"{i:05d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(image).save(path)
    with open(done, "w") as f:
        f.write(f"{len(keep)} classes of shapes seed {seed}, none a test class of seed 0\n")
    return folder


def regime(args) -> None:
    source = write_source_folder(os.path.join(args.out, "source_shapes_seed1"), seed=1)
    common = ["--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps), "--eval-every", "1",
              "--seed", str(args.seed), "--no-symmetrical"]
    pretrained = os.path.join(args.out, "source_k1")
    train(pretrained, ["--dataset", "folder", "--data-dir", source, "--k-final", "1",
                       "--epochs", str(args.pretrain_epochs), "--steps-per-epoch", str(args.steps),
                       "--eval-every", str(args.pretrain_epochs), "--no-symmetrical", "--seed", str(args.seed)])
    weights = os.path.join(pretrained, "model.keras")
    # Most steps at the final K: K 1 -> 2 -> 4 after epochs 1 and 2 (T = 1), then re-clustered every 2 epochs.
    dc = ["--k-final", "4", "--recluster-every", "1", "--full-embedding-epoch", "none"]
    lr = f"{args.papers_lr:g}"
    pretrained = ["--backbone-weights", weights, "--freeze-batchnorm", "--learning-rate", lr]
    papers = pretrained + ["--mask-lr-mult", "100"]
    variants = {
        f"pretrained, K = 1 (lr {lr})": pretrained + ["--k-final", "1"],
        f"pretrained, D&C learnable, papers' ratio (lr {lr}, masks 100x)": papers + dc,
        "pretrained, D&C learnable, masks at tfdnc's default 1e-3": pretrained + dc,
        "pretrained, D&C fixed blocks (CVPR)": pretrained + dc + ["--mask-mode", "fixed"],
        "from scratch, K = 1 (lr 1e-3)": ["--k-final", "1"],
        "from scratch, D&C learnable, masks at the network's rate (1e-3)": dc,
        "from scratch, D&C learnable, masks 100x (1e-3 / 0.1)": dc + ["--mask-lr-mult", "100"],
        "from scratch, D&C fixed blocks (CVPR)": dc + ["--mask-mode", "fixed"],
        # the masks at the pretrained runs' absolute rate (1e-2) on a fast network: rate or ratio?
        "from scratch, D&C learnable, masks 10x (1e-3 / 1e-2)": dc + ["--mask-lr-mult", "10"],
    }
    rows = []
    for i, (name, extra) in enumerate(variants.items()):
        if args.only and i not in args.only:
            continue
        slug = "".join(c if c.isalnum() else "_" for c in name)[:60]
        s = summary(train(os.path.join(args.out, f"regime_{args.seed}_{slug}"), ["--dataset", "shapes"] + common + extra))
        rows.append((name, s))
    print(f"\nshapes (target), {args.epochs} epochs x {args.steps} steps, seed {args.seed}; backbone pretrained "
          f"{args.pretrain_epochs} epochs on shapes seed 1 (K = 1)\n")
    print("| setting | MAP@R final | best | last 3 | masks' mean pairwise cosine | switched-off share |")
    print("|---|---|---|---|---|---|")
    for name, s in rows:
        cos = "-" if s["mask_cosine"] is None else f"{s['mask_cosine']:.3f}"
        off = "-" if s["mask_off_share"] is None else f"{s['mask_off_share']:.3f}"
        print(f"| {name} | {s['final']:.2f} | {s['best']:.2f} | {s['last3']:.2f} | {cos} | {off} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("swing")
    p.add_argument("--dataset", default="shapes")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", type=int, nargs="*", help="run only these variants (0-based; to split over processes)")
    p.add_argument("--extra", default="", help="more train.py flags for every run, e.g. '--k-final 2'")
    p.add_argument("--out", default="runs/bench_method")
    p = sub.add_parser("regime")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--papers-lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", type=int, nargs="*", help="run only these variants (0-based; to split over processes)")
    p.add_argument("--out", default="runs/bench_method")
    args = parser.parse_args(argv)
    {"swing": swing, "regime": regime}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
