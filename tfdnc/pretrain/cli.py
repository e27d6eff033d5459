"""`python -m tfdnc.pretrain`: self-supervised pretraining of a backbone by ordering.

Example (the default MNIST sample, the learned sampling policy):

    python -m tfdnc.pretrain --dataset mnist --backbone small_cnn \
        --sampling policy --epochs 4 --run-dir runs/pretrain \
        --out runs/pretrain/backbone.weights.h5
    python train.py --backbone small_cnn --backbone-weights runs/pretrain/backbone.weights.h5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time

SAMPLING = ("uniform", "policy")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tfdnc.pretrain",
        description="Pretrain a backbone by classifying jigsaw (or frame-order) permutations; "
                    "write its weights for train.py --backbone-weights.")
    data = p.add_argument_group("data (labels are never used)")
    src = data.add_mutually_exclusive_group()
    src.add_argument("--dataset", help="a tfdnc data set name; its train split is used (default: mnist)")
    data.add_argument("--data-dir", help="folder of images (searched recursively); with --dataset, "
                      "the data set's own root")
    src.add_argument("--clips", help="temporal variant: .npy file of uint8 clips (N, T, H, W, C)")
    data.add_argument("--image-size", type=int, default=None,
                      help="side of the images metric learning will see (default: the data set's "
                           "own size; 224 for files); BatchNorm statistics are recalibrated at it")
    data.add_argument("--channels", type=int, default=3, help="channels to decode files to")
    data.add_argument("--max-images", type=int, default=None, help="use at most this many images")
    data.add_argument("--heldout", type=int, default=1000,
                      help="images kept out of training to score the pretext network (policy state)")
    task = p.add_argument_group("pretext task")
    task.add_argument("--grid", type=int, default=3, help="tiles per side")
    task.add_argument("--cell-size", type=int, default=None,
                      help="image resized to grid*cell (default: ceil(1.25 * image side / grid))")
    task.add_argument("--tile-size", type=int, default=None,
                      help="jittered crop per cell (default: round(0.85 * cell)); for --clips the "
                           "crop per frame (default: round(0.85 * frame side))")
    task.add_argument("--no-jitter", action="store_true", help="always crop cell centres")
    task.add_argument("--no-tile-norm", action="store_true", help="skip per-tile normalisation")
    task.add_argument("--num-permutations", type=int, default=100)
    task.add_argument("--permutation-selection", choices=("max_min", "max_mean"), default="max_min",
                      help="greedy rule for the permutation set: 'max_min' (default) maximises the "
                           "smallest Hamming distance to the set, 'max_mean' the mean one (Noroozi & "
                           "Favaro's / Brattoli's rule)")
    net = p.add_argument_group("network")
    net.add_argument("--backbone", default="small_cnn")
    net.add_argument("--width", type=int, default=32, help="small_cnn width (must match train.py)")
    net.add_argument("--pixel-mode", default=None)
    net.add_argument("--item-units", type=int, default=128)
    net.add_argument("--hidden-units", type=int, default=256)
    net.add_argument("--dropout", type=float, default=0.3)
    net.add_argument("--bn-momentum", type=float, default=0.9)
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=4)
    opt.add_argument("--steps-per-epoch", type=int, default=None,
                     help="default: one pass over the training images")
    opt.add_argument("--batch-size", type=int, default=64)
    opt.add_argument("--lr", type=float, default=1e-3)
    opt.add_argument("--seed", type=int, default=0)
    pol = p.add_argument_group("sampling policy")
    pol.add_argument("--sampling", choices=SAMPLING, default="policy",
                     help="'uniform': the fixed baseline; 'policy': REINFORCE-learned sampling")
    pol.add_argument("--block-steps", type=int, default=50, help="training steps per policy block")
    pol.add_argument("--policy-lr", type=float, default=1e-2)
    pol.add_argument("--policy-hidden", type=int, default=32)
    pol.add_argument("--entropy-weight", type=float, default=1e-2)
    pol.add_argument("--uniform-mix", type=float, default=0.1,
                     help="share of uniform draws mixed into the policy's distribution")
    pol.add_argument("--baseline-momentum", type=float, default=0.9)
    pol.add_argument("--advantage-clip", type=float, default=5.0,
                     help="bound on the normalised advantage of one policy update")
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, help="backbone weights file to write (*.weights.h5)")
    out.add_argument("--run-dir", default=None,
                     help="checkpoints, history.json, logs/ (default: next to --out)")
    out.add_argument("--resume", action="store_true", help="continue from the run dir's checkpoint")
    out.add_argument("--no-recalibrate-bn", action="store_true",
                     help="keep the tile-level BatchNorm statistics in the exported weights")
    out.add_argument("--verbose", type=int, default=2)
    return p


def _check_args(args, parser):
    for name in ("epochs", "batch_size", "num_permutations", "heldout", "block_steps", "grid", "width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        parser.error(f"--steps-per-epoch must be >= 1, got {args.steps_per_epoch}")
    if args.lr <= 0 or args.policy_lr <= 0:
        parser.error("--lr and --policy-lr must be > 0")
    if args.heldout < args.num_permutations:
        parser.error(f"--heldout ({args.heldout}) must be >= --num-permutations "
                     f"({args.num_permutations}) so every permutation is scored")


def _load_inputs(args):
    import numpy as np

    from tfdnc.pretrain.sources import load_unlabelled

    if args.clips:
        try:
            clips = np.load(args.clips, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ValueError(f"--clips {args.clips!r}: cannot read ({exc})") from exc
        if clips.ndim != 5:
            raise ValueError(f"--clips {args.clips!r}: expected (N, T, H, W, C), got shape {clips.shape}")
        return np.asarray(clips)
    return load_unlabelled(args.dataset or ("mnist" if args.data_dir is None else None),
                           args.data_dir, args.image_size, args.channels)


def run(args) -> dict:
    """Runs one pretraining; returns a summary dict (also printed as JSON)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tfdnc.backbones import build_backbone
    from tfdnc.pretrain.callbacks import (STATE_FEATURES, HeldOutMonitor, HeldOutPermutations,
                                          PolicySamplingCallback, PretrainCheckpoint)
    from tfdnc.pretrain.handoff import check_weights_path, export_backbone_weights, set_batchnorm_momentum
    from tfdnc.pretrain.jigsaw import ClipFrames, JigsawTiles, OrderPredictionModel
    from tfdnc.pretrain.permutations import generate_permutations
    from tfdnc.pretrain.policy import PermutationPolicy, ReinforceTrainer

    out = check_weights_path(args.out)
    run_dir = args.run_dir or out[: -len(".weights.h5")] + "_run"
    os.makedirs(run_dir, exist_ok=True)
    keras.utils.set_random_seed(args.seed)

    inputs = _load_inputs(args)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(inputs))
    if args.max_images:
        order = order[: args.max_images]
    if len(order) <= args.heldout + args.batch_size:
        raise ValueError(f"only {len(order)} images: need more than --heldout ({args.heldout}) "
                         f"+ --batch-size ({args.batch_size})")
    heldout_inputs = inputs[np.sort(order[: args.heldout])]
    train_inputs = inputs[np.sort(order[args.heldout :])]

    temporal = inputs.ndim == 5
    channels = int(inputs.shape[-1])
    side = int(min(inputs.shape[-3], inputs.shape[-2]))
    if temporal:
        num_items = int(inputs.shape[1])
        tile = args.tile_size or round(0.85 * side)
        if tile > side:
            raise ValueError(f"--tile-size {tile} exceeds the frame side {side}")
        items = ClipFrames(tile, jitter=not args.no_jitter, normalize=not args.no_tile_norm,
                           seed=args.seed)
        cell = None
    else:
        num_items = args.grid * args.grid
        cell = args.cell_size or math.ceil(1.25 * side / args.grid)
        tile = args.tile_size or round(0.85 * cell)
        items = JigsawTiles(args.grid, cell, tile, jitter=not args.no_jitter,
                            normalize=not args.no_tile_norm, seed=args.seed)
    max_perms = math.factorial(num_items)
    if args.num_permutations > max_perms:
        raise ValueError(f"--num-permutations {args.num_permutations} exceeds {num_items}! = {max_perms}")
    permutations = generate_permutations(args.num_permutations, num_items, seed=args.seed,
                                         selection=args.permutation_selection)
    # The classifier's classes are the rows of this set: a resumed run must keep it.
    perms_path = os.path.join(run_dir, "permutations.npy")
    if args.resume and os.path.exists(perms_path):
        saved = np.load(perms_path)
        if saved.shape != permutations.shape or not (saved == permutations).all():
            raise ValueError(f"--resume: {perms_path} holds another permutation set than this "
                             "--num-permutations / --permutation-selection / --seed make; "
                             "resume with the run's own settings")
    else:
        np.save(perms_path, permutations)

    backbone_options = {"width": args.width, "pixel_mode": args.pixel_mode}
    backbone = build_backbone(args.backbone, (tile, tile, channels), **backbone_options)
    set_batchnorm_momentum(backbone, args.bn_momentum)
    model = OrderPredictionModel(backbone, permutations, items, item_units=args.item_units,
                                 hidden_units=args.hidden_units, dropout=args.dropout, seed=args.seed)
    model.compile(optimizer=keras.optimizers.Adam(args.lr))
    model.make_examples(tf.constant(train_inputs[:2]))  # build the item maker
    model(model.make_examples(tf.constant(train_inputs[:2]))[0])
    model.optimizer.build(model.trainable_variables)

    heldout = HeldOutPermutations(heldout_inputs, args.num_permutations)
    trainer = None
    callbacks = []
    if args.sampling == "policy":
        trainer = ReinforceTrainer(
            PermutationPolicy(args.policy_hidden), learning_rate=args.policy_lr,
            baseline_momentum=args.baseline_momentum, entropy_weight=args.entropy_weight,
            uniform_mix=args.uniform_mix, advantage_clip=args.advantage_clip)
        trainer.build(np.zeros((args.num_permutations, len(STATE_FEATURES)), np.float32))
        policy_cb = PolicySamplingCallback(trainer, heldout, args.block_steps)
        callbacks.append(policy_cb)
    else:
        policy_cb = None
        callbacks.append(HeldOutMonitor(heldout))
    checkpoint = PretrainCheckpoint(os.path.join(run_dir, "checkpoints"), model, trainer,
                                    history_path=os.path.join(run_dir, "history.json"))
    callbacks.append(checkpoint)
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")))
    initial_epoch = checkpoint.restore() if args.resume else 0
    if args.resume and initial_epoch == 0:
        print(f"--resume: no checkpoint in {run_dir}/checkpoints, starting fresh", file=sys.stderr)

    steps = args.steps_per_epoch or max(1, len(train_inputs) // args.batch_size)
    dataset = (tf.data.Dataset.from_tensor_slices(train_inputs)
               .shuffle(min(len(train_inputs), 10_000), seed=args.seed + initial_epoch)
               .repeat().batch(args.batch_size, drop_remainder=True).prefetch(2))
    start = time.time()
    if initial_epoch < args.epochs:
        model.fit(dataset, epochs=args.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                  shuffle=False, callbacks=callbacks, verbose=args.verbose)
    seconds = time.time() - start
    scores = heldout.score(model)

    summary = {
        "sampling": args.sampling, "steps": args.epochs * steps, "batch_size": args.batch_size,
        "num_permutations": args.num_permutations, "num_items": num_items,
        "permutation_selection": args.permutation_selection,
        "temporal": temporal, "cell_size": cell, "tile_size": tile,
        "heldout_loss": scores["mean_loss"], "heldout_accuracy": scores["mean_accuracy"],
        "train_seconds": round(seconds, 1), "seed": args.seed,
    }
    if policy_cb is not None and policy_cb.history:
        summary["policy_blocks"] = len(policy_cb.history)
        summary["final_max_sampling_prob"] = policy_cb.history[-1]["max_sampling_prob"]
        with open(os.path.join(run_dir, "policy_history.json"), "w") as f:
            json.dump(policy_cb.history, f, indent=1)
    # Metric learning sees whole images (or single frames) at their own size.
    image_shape = tuple(int(d) for d in inputs.shape[-3:])
    calibration = None
    if not args.no_recalibrate_bn:
        frames = train_inputs.reshape((-1,) + image_shape) if temporal else train_inputs
        calibration = frames[:1024]
    export_backbone_weights(backbone, out, args.backbone, image_shape, calibration,
                            metadata={"pretrain": summary}, **backbone_options)
    summary["out"] = out
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(args, parser)
    try:
        summary = run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
