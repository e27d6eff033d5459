"""`python -m tfdnc.pretrain`: self-supervised pretraining of a backbone by ordering.

Example (the default MNIST sample, the learned sampling policy):

    python -m tfdnc.pretrain --dataset mnist --backbone small_cnn \
        --sampling policy --epochs 4 --run-dir runs/pretrain \
        --out runs/pretrain/backbone.weights.h5
    tfdnc train --backbone small_cnn --backbone-weights runs/pretrain/backbone.weights.h5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time

from tfdnc.utils import write_json

SAMPLING = ("uniform", "policy")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tfdnc pretrain",
        description="Pretrain a backbone by classifying jigsaw (or frame-order) permutations; "
                    "write its weights for tfdnc train --backbone-weights.")
    for add_arguments in (
        _add_data_arguments, _add_task_arguments, _add_network_arguments,
        _add_optimisation_arguments, _add_policy_arguments, _add_output_arguments,
    ):
        add_arguments(p)
    return p


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the unlabelled images (or clips) come from."""
    data = parser.add_argument_group("data (labels are never used)")
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


def _add_task_arguments(parser: argparse.ArgumentParser) -> None:
    """The jigsaw / frame-order task and its permutation set."""
    task = parser.add_argument_group("pretext task")
    task.add_argument("--grid", type=int, default=3, help="tiles per side")
    task.add_argument("--cell-size", type=int, default=None,
                      help="image resized to grid*cell (default: ceil(1.25 * image side / grid))")
    task.add_argument("--tile-size", type=int, default=None,
                      help="jittered crop per cell (default: round(0.85 * cell)); for --clips the "
                           "crop per frame (default: round(0.85 * frame side))")
    task.add_argument("--no-jitter", action="store_true", help="always crop cell centres")
    task.add_argument("--no-tile-norm", action="store_true", help="skip per-tile normalisation")
    task.add_argument("--num-permutations", type=int, default=100,
                      help="size N of the permutation set the network tells apart (default: 100)")
    task.add_argument("--permutation-selection", choices=("max_min", "max_mean"), default="max_min",
                      help="greedy rule for the permutation set: 'max_min' (default) maximises the "
                           "smallest Hamming distance to the set, 'max_mean' the mean one (Noroozi & "
                           "Favaro's / Brattoli's rule)")


def _add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """The backbone and the order-prediction head."""
    net = parser.add_argument_group("network")
    net.add_argument("--backbone", default="small_cnn",
                     help="backbone to pretrain, as tfdnc train --backbone (default: small_cnn)")
    net.add_argument("--width", type=int, default=32, help="small_cnn width (must match tfdnc train --width)")
    net.add_argument("--pixel-mode", default=None,
                     help="pixel normalisation: caffe, torch, tf, scale or none (default: the backbone's)")
    net.add_argument("--item-units", type=int, default=128,
                     help="width of the dense layer applied to each tile's features (default: 128)")
    net.add_argument("--hidden-units", type=int, default=256,
                     help="width of the order-prediction head's hidden layer (default: 256)")
    net.add_argument("--dropout", type=float, default=0.3,
                     help="dropout rate before the head's last layer (default: 0.3)")
    net.add_argument("--batchnorm-momentum", "--bn-momentum", type=float, default=0.9,
                     help="BatchNorm momentum, Keras convention (--bn-momentum: deprecated name)")


def _add_optimisation_arguments(parser: argparse.ArgumentParser) -> None:
    """Epochs, batches, learning rate and seed."""
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=4, help="pretraining epochs in all (default: 4)")
    opt.add_argument("--steps-per-epoch", type=int, default=None,
                     help="default: one pass over the training images")
    opt.add_argument("--batch-size", type=int, default=64, help="images per training step (default: 64)")
    opt.add_argument("--learning-rate", "--lr", type=float, default=1e-3, help="Adam learning rate (--lr: deprecated name)")
    opt.add_argument("--seed", type=int, default=0,
                     help="random seed of weights, permutations and sampling (default: 0)")


def _add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """The learned (REINFORCE) permutation-sampling policy."""
    pol = parser.add_argument_group("sampling policy")
    pol.add_argument("--sampling", choices=SAMPLING, default="policy",
                     help="'uniform': the fixed baseline; 'policy': REINFORCE-learned sampling")
    pol.add_argument("--block-steps", type=int, default=50, help="training steps per policy block")
    pol.add_argument("--policy-learning-rate", "--policy-lr", type=float, default=1e-2,
                     help="Adam learning rate of the policy (--policy-lr: deprecated name)")
    pol.add_argument("--policy-hidden", type=int, default=32,
                     help="width of the policy network's hidden layer (default: 32)")
    pol.add_argument("--entropy-weight", type=float, default=1e-2,
                     help="weight of the entropy bonus that keeps the policy from collapsing (default: 0.01)")
    pol.add_argument("--uniform-mix", type=float, default=0.1,
                     help="share of uniform draws mixed into the policy's distribution")
    pol.add_argument("--baseline-momentum", type=float, default=0.9,
                     help="momentum of the moving average of the reward, REINFORCE's baseline (default: 0.9)")
    pol.add_argument("--advantage-clip", type=float, default=5.0,
                     help="bound on the normalised advantage of one policy update")


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """The weights file, run directory and logging."""
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, help="backbone weights file to write (*.weights.h5)")
    out.add_argument("--run-dir", default=None,
                     help="checkpoints, history.json, logs/ (default: next to --out)")
    out.add_argument("--resume", action="store_true", help="continue from the run dir's checkpoint")
    out.add_argument("--no-recalibrate-bn", action="store_true",
                     help="keep the tile-level BatchNorm statistics in the exported weights")
    out.add_argument("--verbose", type=int, default=2,
                     help="0 silent, 1 progress bars, 2 one line per epoch (default: 2)")


def _check_args(args, parser):
    for name in ("epochs", "batch_size", "num_permutations", "heldout", "block_steps", "grid", "width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        parser.error(f"--steps-per-epoch must be >= 1, got {args.steps_per_epoch}")
    if args.learning_rate <= 0 or args.policy_learning_rate <= 0:
        parser.error("--learning-rate and --policy-learning-rate must be > 0")
    if args.heldout < args.num_permutations:
        parser.error(f"--heldout ({args.heldout}) must be >= --num-permutations "
                     f"({args.num_permutations}) so every permutation is scored")


def _load_inputs(args):
    import numpy as np

    from tfdnc.pretrain.sources import load_unlabelled

    if args.clips:
        try:
            clips = np.load(args.clips, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--clips {args.clips!r}: cannot read ({exc})") from exc
        if clips.ndim != 5:
            raise ValueError(f"--clips {args.clips!r}: expected (N, T, H, W, C), got shape {clips.shape}")
        return np.asarray(clips)
    return load_unlabelled(args.dataset or ("mnist" if args.data_dir is None else None),
                           args.data_dir, args.image_size, args.channels)


def run(args) -> dict:
    """Runs one pretraining; returns a summary dict (also printed as JSON).

    The steps: split the inputs, choose the items and the permutation set,
    build the model and its callbacks, fit, then score on the held-out
    inputs and hand the trunk's weights over to metric learning.
    """
    import keras

    from tfdnc.pretrain.handoff import check_weights_path

    out = check_weights_path(args.out)
    run_dir = args.run_dir or out[: -len(".weights.h5")] + "_run"
    os.makedirs(run_dir, exist_ok=True)
    keras.utils.set_random_seed(args.seed)

    inputs = _load_inputs(args)
    train_inputs, heldout_inputs = _split_inputs(args, inputs)
    task = _pretext_task(args, inputs)
    permutations = _permutation_set(args, task["num_items"], run_dir)
    model, backbone = _build_model(args, task, permutations, int(inputs.shape[-1]), train_inputs)
    heldout, policy_cb, checkpoint, callbacks = _callbacks(args, model, heldout_inputs, run_dir)
    initial_epoch = checkpoint.restore() if args.resume else 0
    if args.resume and initial_epoch == 0:
        print(f"--resume: no checkpoint in {run_dir}/checkpoints, starting fresh", file=sys.stderr)
    steps, seconds = _fit(args, model, train_inputs, callbacks, initial_epoch)
    summary = _summary(args, task, steps, seconds, heldout.score(model), policy_cb, run_dir)
    _hand_over(args, backbone, inputs, train_inputs, task["temporal"], out, summary)
    summary["out"] = out
    write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary


def _split_inputs(args, inputs):
    """(training inputs, held-out inputs), a seeded random split."""
    import numpy as np

    order = np.random.default_rng(args.seed).permutation(len(inputs))
    if args.max_images:
        order = order[: args.max_images]
    if len(order) <= args.heldout + args.batch_size:
        raise ValueError(f"only {len(order)} images: need more than --heldout ({args.heldout}) "
                         f"+ --batch-size ({args.batch_size})")
    return inputs[np.sort(order[args.heldout :])], inputs[np.sort(order[: args.heldout])]


def _pretext_task(args, inputs) -> dict:
    """The item maker (jigsaw tiles of an image, or frames of a clip) and its sizes."""
    from tfdnc.pretrain.jigsaw import ClipFrames, JigsawTiles

    temporal = inputs.ndim == 5
    side = int(min(inputs.shape[-3], inputs.shape[-2]))
    if temporal:
        num_items = int(inputs.shape[1])
        tile = args.tile_size or round(0.85 * side)
        if tile > side:
            raise ValueError(f"--tile-size {tile} exceeds the frame side {side}")
        items = ClipFrames(tile, jitter=not args.no_jitter, normalize=not args.no_tile_norm, seed=args.seed)
        cell = None
    else:
        num_items = args.grid * args.grid
        cell = args.cell_size or math.ceil(1.25 * side / args.grid)
        tile = args.tile_size or round(0.85 * cell)
        items = JigsawTiles(args.grid, cell, tile, jitter=not args.no_jitter,
                            normalize=not args.no_tile_norm, seed=args.seed)
    return {"items": items, "num_items": num_items, "tile": tile, "cell": cell, "temporal": temporal}


def _permutation_set(args, num_items: int, run_dir: str):
    """The classifier's classes; a resumed run must keep the set it started with."""
    import numpy as np

    from tfdnc.pretrain.permutations import generate_permutations

    max_perms = math.factorial(num_items)
    if args.num_permutations > max_perms:
        raise ValueError(f"--num-permutations {args.num_permutations} exceeds {num_items}! = {max_perms}")
    permutations = generate_permutations(args.num_permutations, num_items, seed=args.seed,
                                         selection=args.permutation_selection)
    perms_path = os.path.join(run_dir, "permutations.npy")
    if args.resume and os.path.exists(perms_path):
        saved = np.load(perms_path, allow_pickle=False)
        if saved.shape != permutations.shape or not (saved == permutations).all():
            raise ValueError(f"--resume: {perms_path} holds another permutation set than this "
                             "--num-permutations / --permutation-selection / --seed make; "
                             "resume with the run's own settings")
    else:
        np.save(perms_path, permutations)
    return permutations


def _backbone_options(args) -> dict:
    return {"width": args.width, "pixel_mode": args.pixel_mode}


def _build_model(args, task: dict, permutations, channels: int, train_inputs):
    """(the compiled, built order-prediction model, its backbone)."""
    import keras
    import tensorflow as tf

    from tfdnc.backbones import build_backbone
    from tfdnc.pretrain.handoff import set_batchnorm_momentum
    from tfdnc.pretrain.jigsaw import OrderPredictionModel

    tile = task["tile"]
    backbone = build_backbone(args.backbone, (tile, tile, channels), **_backbone_options(args))
    set_batchnorm_momentum(backbone, args.batchnorm_momentum)
    model = OrderPredictionModel(backbone, permutations, task["items"], item_units=args.item_units,
                                 hidden_units=args.hidden_units, dropout=args.dropout, seed=args.seed)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    model.make_examples(tf.constant(train_inputs[:2]))  # build the item maker
    model(model.make_examples(tf.constant(train_inputs[:2]))[0])
    model.optimizer.build(model.trainable_variables)
    return model, backbone


def _callbacks(args, model, heldout_inputs, run_dir: str):
    """(held-out scorer, policy callback or None, checkpoint, the callback list)."""
    import keras
    import numpy as np

    from tfdnc.pretrain.callbacks import (STATE_FEATURES, HeldOutMonitor, HeldOutPermutations,
                                          PolicySamplingCallback, PretrainCheckpoint)
    from tfdnc.pretrain.policy import PermutationPolicy, ReinforceTrainer

    heldout = HeldOutPermutations(heldout_inputs, args.num_permutations)
    trainer = policy_cb = None
    if args.sampling == "policy":
        trainer = ReinforceTrainer(
            PermutationPolicy(args.policy_hidden), learning_rate=args.policy_learning_rate,
            baseline_momentum=args.baseline_momentum, entropy_weight=args.entropy_weight,
            uniform_mix=args.uniform_mix, advantage_clip=args.advantage_clip)
        trainer.build(np.zeros((args.num_permutations, len(STATE_FEATURES)), np.float32))
        policy_cb = PolicySamplingCallback(trainer, heldout, args.block_steps)
        callbacks = [policy_cb]
    else:
        callbacks = [HeldOutMonitor(heldout)]
    checkpoint = PretrainCheckpoint(os.path.join(run_dir, "checkpoints"), model, trainer,
                                    history_path=os.path.join(run_dir, "history.json"))
    callbacks.append(checkpoint)
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")))
    return heldout, policy_cb, checkpoint, callbacks


def _fit(args, model, train_inputs, callbacks, initial_epoch: int) -> tuple[int, float]:
    """Trains from `initial_epoch`; returns (steps per epoch, seconds)."""
    import tensorflow as tf

    steps = args.steps_per_epoch or max(1, len(train_inputs) // args.batch_size)
    dataset = (tf.data.Dataset.from_tensor_slices(train_inputs)
               .shuffle(min(len(train_inputs), 10_000), seed=args.seed + initial_epoch)
               .repeat().batch(args.batch_size, drop_remainder=True).prefetch(2))
    start = time.time()
    if initial_epoch < args.epochs:
        model.fit(dataset, epochs=args.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                  shuffle=False, callbacks=callbacks, verbose=args.verbose)
    return steps, time.time() - start


def _summary(args, task: dict, steps: int, seconds: float, scores: dict, policy_cb, run_dir: str) -> dict:
    summary = {
        "sampling": args.sampling, "steps": args.epochs * steps, "batch_size": args.batch_size,
        "num_permutations": args.num_permutations, "num_items": task["num_items"],
        "permutation_selection": args.permutation_selection,
        "temporal": task["temporal"], "cell_size": task["cell"], "tile_size": task["tile"],
        "heldout_loss": scores["mean_loss"], "heldout_accuracy": scores["mean_accuracy"],
        "train_seconds": round(seconds, 1), "seed": args.seed,
    }
    if policy_cb is not None and policy_cb.history:
        summary["policy_blocks"] = len(policy_cb.history)
        summary["final_max_sampling_prob"] = policy_cb.history[-1]["max_sampling_prob"]
        write_json(os.path.join(run_dir, "policy_history.json"), policy_cb.history, indent=1)
    return summary


def _hand_over(args, backbone, inputs, train_inputs, temporal: bool, out: str, summary: dict) -> None:
    """Writes the trunk's weights for metric learning (BatchNorm recalibrated on whole images)."""
    from tfdnc.pretrain.handoff import export_backbone_weights

    # Metric learning sees whole images (or single frames) at their own size.
    image_shape = tuple(int(d) for d in inputs.shape[-3:])
    calibration = None
    if not args.no_recalibrate_bn:
        frames = train_inputs.reshape((-1,) + image_shape) if temporal else train_inputs
        calibration = frames[:1024]
    export_backbone_weights(backbone, out, args.backbone, image_shape, calibration,
                            metadata={"pretrain": summary}, **_backbone_options(args))


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
