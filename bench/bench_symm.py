"""Cost of Symmetrical Synthesis: train-step time with and without it.

For each loss, two `DivideAndConquerModel`s with the same backbone, batch and
loss (one with `symmetrical=True`) run their compiled train function on the
same fixed class-balanced batch. The two alternate in rounds (so drift in
machine load hits both alike); the median step time of each is reported with
the ratio. The loss alone (forward + backward on a fixed embedding batch) is
timed the same way, as the paper's "loss" row.

    python bench/bench_symm.py                                   # small_cnn, 28x28, batch 40x2
    python bench/bench_symm.py --losses npair,angular --rounds 9
    python bench/bench_symm.py --backbone resnet50 --image-size 96 --channels 3

With `--ablation` it instead trains on the default data through `train.py`,
each loss with and without Symm, K = 1 and D&C (K = --k-final), for each seed,
and prints test Recall@1, MAP@R and NMI as mean ± standard deviation over seeds
(runs whose metrics.json exists are reused):

    python bench/bench_symm.py --ablation --losses margin,npair --epochs 4 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfdnc  # noqa: E402,F401
from tfdnc.backbones import build_backbone  # noqa: E402
from tfdnc.losses import get_loss  # noqa: E402
from tfdnc.model import DivideAndConquerModel  # noqa: E402


def fixed_batch(args):
    rng = np.random.default_rng(0)
    b = args.classes_per_batch * args.images_per_class
    images = rng.uniform(0, 255, (b, args.image_size, args.image_size, args.channels))
    labels = np.repeat(np.arange(args.classes_per_batch), args.images_per_class)
    x = {"images": tf.constant(images, tf.float32), "cluster": tf.zeros((b,), tf.int32)}
    return x, tf.constant(labels, tf.int32)


def build(args, loss):
    keras.utils.set_random_seed(0)
    backbone = build_backbone(
        args.backbone, (args.image_size, args.image_size, args.channels), weights=None
    )
    model = DivideAndConquerModel(backbone, embedding_dim=args.embedding_dim, k_max=1, loss=loss)
    model.compile(optimizer=keras.optimizers.Adam(1e-5), jit_compile=args.jit)
    return model


def step_timer(model, batch, steps):
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    iterator = iter(dataset)
    model.make_train_function()
    train = model.train_function

    def run():
        start = time.perf_counter()
        for _ in range(steps):
            logs = train(iterator)
        float(logs["loss"])  # wait for the device
        return (time.perf_counter() - start) / steps

    return run


def loss_timer(loss, labels, embeddings, steps, jit):
    @tf.function(jit_compile=jit)
    def forward_backward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss(labels, x)
        return value, tape.gradient(value, x)

    def run():
        start = time.perf_counter()
        for _ in range(steps):
            value, grad = forward_backward(embeddings)
        float(value)
        return (time.perf_counter() - start) / steps

    return run


def alternate(runs: dict, rounds: int) -> dict:
    """Median seconds of each run and the median of the per-round ratios symm / plain.

    Rounds interleave the runs, so load changes on a shared machine hit both
    alike; the first call of each warms up (compiles).
    """
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(run())
    out = {name: statistics.median(t) for name, t in times.items()}
    out["ratio"] = statistics.median(s / p for s, p in zip(times["symm"], times["plain"]))
    return out


def ablation(args):
    seeds = [int(s) for s in args.seeds.split(",")]
    ks = [1, args.k_final]
    rows = []
    for name in args.losses.split(","):
        for k in ks:
            for symm in (False, True):
                results = []
                for seed in seeds:
                    run_dir = os.path.join(
                        args.out_dir, f"{name}-k{k}-{'symm' if symm else 'plain'}-s{seed}"
                    )
                    metrics = os.path.join(run_dir, "metrics.json")
                    if not os.path.exists(metrics):
                        cmd = [
                            sys.executable, os.path.join(ROOT, "train.py"), "--loss", name,
                            "--k-final", str(k), "--epochs", str(args.epochs), "--seed", str(seed),
                            "--run-dir", run_dir, "--eval-every", str(args.epochs + 1),
                            "--no-export", "--verbose", "0",
                        ] + (["--symm"] if symm else [])
                        start = time.perf_counter()
                        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        print(f"# {' '.join(cmd[1:])}: {time.perf_counter() - start:.0f} s", flush=True)
                    with open(metrics) as f:
                        results.append(json.load(f)["after"]["results"]["test"])
                rows.append((name, k, symm, results))
    print(f"# default data, {args.epochs} epochs, seeds {seeds}; test set, mean ± std over seeds (%)")
    print("| loss | K | Symm | R@1 | MAP@R | NMI |")
    print("|---|---|---|---|---|---|")
    for name, k, symm, results in rows:
        cells = []
        for key in ("recall@1", "map@r", "nmi"):
            values = [100 * r[key] for r in results]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.2f} ± {spread:.2f}")
        print(f"| {name} | {k} | {'yes' if symm else 'no'} | " + " | ".join(cells) + " |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--losses", default="margin,triplet,npair,lifted,angular,multi_similarity")
    parser.add_argument("--symm-rule", default="paper", choices=("paper", "code"))
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--classes-per-batch", type=int, default=40)
    parser.add_argument("--images-per-class", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="train steps per timed round")
    parser.add_argument("--loss-steps", type=int, default=50, help="loss evaluations per timed round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--train-step", action=argparse.BooleanOptionalAction, default=True,
                        help="time full train steps (--no-train-step: the loss alone)")
    parser.add_argument("--ablation", action="store_true", help="train with and without Symm instead")
    parser.add_argument("--epochs", type=int, default=4, help="--ablation: epochs per run")
    parser.add_argument("--k-final", type=int, default=2, help="--ablation: K of the D&C runs")
    parser.add_argument("--seeds", default="0,1,2", help="--ablation: seeds")
    parser.add_argument("--out-dir", default="runs/symm_ablation", help="--ablation: run directories")
    args = parser.parse_args(argv)
    if args.ablation:
        return ablation(args)

    batch = fixed_batch(args)
    rng = np.random.default_rng(1)
    b = args.classes_per_batch * args.images_per_class
    emb = rng.normal(size=(b, args.embedding_dim)).astype(np.float32)
    emb_unit = tf.constant(emb / np.linalg.norm(emb, axis=1, keepdims=True))
    device = "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"
    print(f"# {device}; backbone {args.backbone} {args.image_size}x{args.image_size}x{args.channels}, "
          f"batch {args.classes_per_batch}x{args.images_per_class}={b}, d={args.embedding_dim}, "
          f"XLA {'on' if args.jit else 'off'}, symm_rule={args.symm_rule}, "
          f"medians of {args.rounds} alternating rounds; ratio = median of per-round ratios")
    print("| loss | train step (ms) | with Symm (ms) | ratio | loss fwd+bwd (ms) | with Symm (ms) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in args.losses.split(","):
        plain = get_loss(name)
        symm = get_loss(name, symmetrical=True, symm_rule=args.symm_rule)
        x = emb_unit if plain.needs().normalized else tf.constant(emb)
        steps = {"plain": float("nan"), "symm": float("nan"), "ratio": float("nan")}
        if args.train_step:
            steps = alternate(
                {
                    "plain": step_timer(build(args, plain), batch, args.steps),
                    "symm": step_timer(build(args, symm), batch, args.steps),
                },
                args.rounds,
            )
        losses = alternate(
            {
                "plain": loss_timer(plain, batch[1], x, args.loss_steps, args.jit),
                "symm": loss_timer(symm, batch[1], x, args.loss_steps, args.jit),
            },
            args.rounds,
        )
        print(
            f"| {name} | {steps['plain'] * 1e3:.2f} | {steps['symm'] * 1e3:.2f} | "
            f"{steps['ratio']:.3f} | {losses['plain'] * 1e3:.3f} | "
            f"{losses['symm'] * 1e3:.3f} | {losses['ratio']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
