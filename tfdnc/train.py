"""`python train.py`: Divide & Conquer training, evaluation and export in one run.

With no arguments it trains Divide & Conquer (K = 1 -> 4, multi-similarity
loss with Symmetrical Synthesis) on the generated `shapes` data set (200 train
/ 200 test classes in four families), prints Recall@K, NMI, MAP@R and mARP
before and after, and leaves a run directory:

    RUN_DIR/config.json          the TrainConfig of the run
    RUN_DIR/model.keras          the trained model (keras.saving.load_model)
    RUN_DIR/checkpoints/         last.keras, written every epoch
    RUN_DIR/backup/              weights + optimizer state for --resume
    RUN_DIR/clusters.npz         the cluster state (with clusters.prev.npz)
    RUN_DIR/history.json         per-epoch logs, K and cluster sizes
    RUN_DIR/metrics.json         metrics before and after training
    RUN_DIR/logs/                TensorBoard
    RUN_DIR/export/tfdnc/1/      the SavedModel for TensorFlow Serving
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
import typing

import keras
import numpy as np

from tfdnc.config import TrainConfig

_HELP = {
    "dataset": "data set name (mnist, digits, shapes, cub, cars, sop, inshop, vehicleid, folder, csv)",
    "data_dir": "folder holding the data set in its distributed layout",
    "backbone": "backbone name (small_cnn, resnet50, ...)",
    "backbone_weights": "None, 'imagenet' or a weights file (e.g. from python -m tfdnc.pretrain)",
    "k_final": "final number of learners K",
    "growth": "'double' (TPAMI: K doubles every T epochs) or 'fixed' (CVPR: K from the start)",
    "mask_mode": "'learnable' (TPAMI) or 'fixed' (CVPR contiguous blocks)",
    "recluster_every": "T: re-cluster every T epochs",
    "full_embedding_epoch": "epoch from which the loss uses the full embedding ('none': never)",
    "loss": "learner loss",
    "loss_options": "JSON object of loss arguments, e.g. '{\"alpha\": 0.2}'",
    "symm": "Symmetrical Synthesis of hard negatives",
    "classes_per_batch": "P classes per batch",
    "images_per_class": "M images per class",
    "steps_per_epoch": "batches per epoch (default: ceil(train images / batch size))",
    "weight_decay_mode": "'coupled' (torch Adam L2, the references) or 'decoupled' (Keras Adam weight_decay)",
    "batchnorm_momentum": "backbone BatchNorm momentum, Keras convention (torch's 0.1 = 0.9 here); none: default",
    "run_dir": "output folder of the run",
    "cache_dir": "decode the training images once into this folder and train from it",
    "cache_max_side": "shrink cached images to this shorter side (faster; None keeps full size)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a Divide & Conquer embedding, evaluate it and export a SavedModel.",
    )
    parser.add_argument("--config", help="JSON file of TrainConfig settings (flags override it)")
    parser.add_argument("--preset", help="paper preset, e.g. tpami-cub (see tfdnc.presets)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its last checkpoint")
    parser.add_argument("--export", action=argparse.BooleanOptionalAction, default=True,
                        help="export a SavedModel into RUN_DIR/export at the end")
    parser.add_argument("--strict-images", action="store_true",
                        help="fail on an unreadable image instead of skipping it")
    parser.add_argument("--backup-every-steps", type=int, default=None,
                        help="also back up weights every N steps (default: every epoch)")
    parser.add_argument("--verbose", type=int, default=1, help="0 silent, 1 progress bars, 2 one line per epoch")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "preset":
            continue  # the --preset flag above sets it
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        text = _HELP.get(f.name, f.name.replace("_", " "))
        # SUPPRESS: a flag not given leaves no attribute, so "none" can set None.
        unset = argparse.SUPPRESS
        text += f" (default: {f.default if f.default is not dataclasses.MISSING else f.default_factory()})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=unset, help=text)
        elif f.name == "loss_options":
            parser.add_argument(flag, type=json.loads, default=unset, help=text)
        elif typing.get_origin(kind) is tuple:
            elem = float if typing.get_args(kind)[0] is float else int
            parser.add_argument(flag, type=elem, nargs="+", default=unset, help=text)
        else:
            parser.add_argument(flag, type=_scalar_parser(kind), default=unset, help=text)
    return parser


def _scalar_parser(kind):
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    base = args[0] if args else kind
    optional = type(None) in typing.get_args(kind)

    def parse(text: str):
        if optional and text.lower() in ("none", "null", ""):
            return None
        return base(text)

    parse.__name__ = getattr(base, "__name__", "value")
    return parse


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Preset, then config file, then explicit flags; the run's config on --resume."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if f.name != "preset" and hasattr(args, f.name)}
    if args.resume:
        run_dir = overrides.get("run_dir", TrainConfig.run_dir)
        path = os.path.join(run_dir, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--resume: {path!r} does not exist; nothing to resume in --run-dir {run_dir!r}")
        values = TrainConfig.load(path).to_dict()
        allowed = {"epochs", "run_dir", "strategy"}
        ignored = sorted(set(overrides) - allowed - {k for k, v in overrides.items() if values.get(k) == v})
        if ignored:
            print(f"[tfdnc] --resume keeps the run's settings; ignoring {', '.join('--' + k.replace('_', '-') for k in ignored)}")
        values.update({k: v for k, v in overrides.items() if k in allowed})
        return TrainConfig.from_dict(values, source=path)
    values: dict = {}
    if args.preset:
        from tfdnc.presets import get_preset

        values.update(get_preset(args.preset))
        values["preset"] = args.preset
    if args.config:
        values.update(_read_json(args.config))
    values.update(overrides)
    return TrainConfig.from_dict(values, source=args.config or "command line")


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--config: cannot read {path!r}: {exc}") from exc


def run(
    config: TrainConfig,
    resume: bool = False,
    export: bool = True,
    strict_images: bool = False,
    backup_every_steps: int | None = None,
    verbose: int = 1,
) -> dict:
    """Trains, evaluates and (optionally) exports; returns the metrics dict."""
    from tfdnc.backbones import build_backbone
    from tfdnc.callbacks import DivideAndConquerSchedule, NonFiniteLossGuard
    from tfdnc.data.pipeline import image_channels, make_eval_dataset, make_train_dataset
    from tfdnc.data.sampling import ClusterBatchSampler
    from tfdnc.data.validation import validate_training_set
    from tfdnc.datasets import load_dataset
    from tfdnc.losses import get_loss
    from tfdnc.model import DivideAndConquerModel
    from tfdnc.protocols import run_protocol

    from tfdnc.distributed import build_strategy, is_multi_worker, synchronize_batchnorm, worker_info

    # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs any op.
    strategy = build_strategy(config.strategy)
    multi_worker = is_multi_worker(strategy)
    if multi_worker and resume:
        raise ValueError("--resume is not supported with --strategy multi-worker yet; resume with mirrored/default")
    chief = worker_info(strategy).is_chief
    run_dir = config.run_dir
    if not resume and os.path.exists(os.path.join(run_dir, "backup")):
        raise FileExistsError(
            f"--run-dir {run_dir!r} already holds a run; pass --resume to continue it or choose another --run-dir"
        )
    os.makedirs(run_dir, exist_ok=True)
    if chief:
        config.save(os.path.join(run_dir, "config.json"))
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy(config.mixed_precision)

    splits = load_dataset(config.dataset, config.data_dir, use_boxes=config.use_boxes)
    train_set, report = validate_training_set(splits.train, strict=strict_images)
    if report.lines():
        with open(os.path.join(run_dir, "skipped.txt"), "w") as f:
            f.write("\n".join(report.lines()) + "\n")
        print(f"[tfdnc] skipped {report.removed} unreadable image(s) and {len(report.lone_classes)} "
              f"single-image class(es); see {os.path.join(run_dir, 'skipped.txt')}")
    classes, contiguous = np.unique(train_set.labels, return_inverse=True)
    channels = image_channels(train_set)
    if config.cache_dir:
        from tfdnc.data.cache import cache_decoded_images

        train_set = cache_decoded_images(train_set, config.cache_dir, config.cache_max_side, channels)

    loss_options = dict(config.loss_options)
    if config.symm:
        loss_options["symmetrical"] = True
    if config.loss == "margin" and loss_options.get("learnable_beta"):
        loss_options.setdefault("num_classes", len(classes))
    with strategy.scope():
        loss = get_loss(config.loss, **loss_options)
        backbone = build_backbone(
            config.backbone, (config.image_size, config.image_size, channels), weights=config.backbone_weights,
            freeze_batchnorm=config.freeze_batchnorm, pixel_mode=config.pixel_mode,
            batchnorm_momentum=config.batchnorm_momentum, batchnorm_epsilon=config.batchnorm_epsilon,
        )
        coupled = config.weight_decay_mode == "coupled"
        mask_decay = config.weight_decay if config.mask_weight_decay is None else config.mask_weight_decay
        model = DivideAndConquerModel(
            backbone, embedding_dim=config.embedding_dim, k_max=config.k_final, mask_mode=config.mask_mode,
            initial_k=1, loss=loss, mask_loss_weight=config.mask_loss_weight, mask_learning_rate=config.mask_lr,
            weight_decay=config.weight_decay if coupled else 0.0,
            mask_weight_decay=mask_decay if coupled and config.mask_mode == "learnable" else 0.0,
            loss_learning_rate=config.loss_lr,
        )
        decoupled = None if coupled else (config.weight_decay or None)
        model.compile(optimizer=keras.optimizers.Adam(config.lr, weight_decay=decoupled),
                      jit_compile=config.jit_compile)
    if strategy.num_replicas_in_sync > 1:
        # Replicas normalise with global-batch moments, as one device would.
        synchronize_batchnorm(model)

    sampler = ClusterBatchSampler(contiguous, config.classes_per_batch, config.images_per_class, seed=config.seed)
    steps = config.steps_per_epoch or math.ceil(len(train_set) / config.batch_size)
    train_ds = make_train_dataset(train_set, sampler, steps, config.image_size, labels=contiguous,
                                  crop_scale=config.crop_scale, crop_ratio=config.crop_ratio, flip=config.flip)

    def embed(image_set):
        dataset = make_eval_dataset(image_set, config.image_size, config.eval_resize, batch_size=256)
        if multi_worker:  # Keras predict cannot run under MultiWorkerMirroredStrategy
            import tensorflow as tf

            from tfdnc.distributed.recluster import embed_images

            return embed_images(tf.function(lambda x: model(x, training=False)), dataset, len(image_set))
        return model.predict(dataset, verbose=0)

    def evaluate(title: str, result=None) -> dict:
        result = result or run_protocol(splits, embed, progress=verbose > 0)
        print(f"\n{title}\n{result.table()}")
        return result.to_dict()

    if multi_worker:
        from tfdnc.distributed.recluster import DistributedSchedule

        DivideAndConquerSchedule = functools.partial(DistributedSchedule, strategy)  # noqa: N806
    schedule = DivideAndConquerSchedule(
        sampler, train_set, k_final=config.k_final, image_size=config.image_size, resize_size=config.eval_resize,
        growth=config.growth, recluster_every=config.recluster_every,
        full_embedding_epoch=config.full_embedding_epoch, final_k1_epochs=config.final_k1_epochs,
        freeze_backbone_after_recluster=config.freeze_backbone_after_recluster,
        cluster_features=config.cluster_features, kmeans_iters=config.kmeans_iters, seed=config.seed,
        state_dir=run_dir, verbose=verbose,
    )
    metrics_path = os.path.join(run_dir, "metrics.json")
    metrics = _read_json(metrics_path) if resume and os.path.exists(metrics_path) else {}
    if "before" not in metrics and chief:
        metrics["before"] = evaluate("Before training")
        _write_json(metrics_path, metrics)

    backup_dir = os.path.join(run_dir, "backup")
    protocol_evaluation = ProtocolEvaluation(splits, embed, every=config.eval_every)
    callbacks = [
        NonFiniteLossGuard(checkpoint_hint=backup_dir),
        schedule,
        protocol_evaluation,
        HistoryWriter(os.path.join(run_dir, "history.json"), schedule),
        keras.callbacks.BackupAndRestore(backup_dir, save_freq=backup_every_steps or "epoch",
                                         delete_checkpoint=False, double_checkpoint=True),
        keras.callbacks.ModelCheckpoint(os.path.join(run_dir, "checkpoints", "last.keras")),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")),
    ]
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    start = time.perf_counter()
    if multi_worker:
        from tfdnc.distributed.driver import fit_custom_loop, per_replica_dataset_fn

        def worker_dataset(num_shards, shard_index):
            return make_train_dataset(train_set, sampler, steps, config.image_size, labels=contiguous,
                                      crop_scale=config.crop_scale, crop_ratio=config.crop_ratio, flip=config.flip,
                                      num_shards=num_shards, shard_index=shard_index)

        # The chief alone checkpoints, logs and evaluates; the others train and re-cluster in step.
        callbacks = [c for c in callbacks if chief or isinstance(c, (NonFiniteLossGuard, DistributedSchedule))]
        callbacks = [c for c in callbacks if not isinstance(c, keras.callbacks.BackupAndRestore)]
        fit_custom_loop(model, strategy, per_replica_dataset_fn(worker_dataset, sampler.batch_size),
                        steps_per_epoch=steps, epochs=config.epochs, callbacks=callbacks, verbose=verbose)
    elif config.strategy == "mirrored":
        from tfdnc.distributed.driver import fit_mirrored

        fit_mirrored(model, strategy, train_ds, steps_per_epoch=steps, epochs=config.epochs, callbacks=callbacks,
                     verbose=verbose, shuffle=False)
    else:
        model.fit(train_ds, steps_per_epoch=steps, epochs=config.epochs, callbacks=callbacks, verbose=verbose,
                  shuffle=False)
    train_seconds = time.perf_counter() - start
    if not chief:
        return {}

    model.save(os.path.join(run_dir, "model.keras"))
    # The last epoch's evaluation already scored these weights; reuse it.
    final = protocol_evaluation.result if protocol_evaluation.result_epoch == config.epochs - 1 else None
    metrics["after"] = evaluate("After training", final)
    metrics["train_seconds"] = metrics.get("train_seconds", 0.0) + train_seconds
    metrics["K"] = model.num_learners
    if export:
        from tfdnc.exporting import export_run

        path = export_run(run_dir, os.path.join(run_dir, "export"), "tfdnc")
        metrics["export"] = path
        print(f"[tfdnc] exported SavedModel: {path}")
    _write_json(metrics_path, metrics)
    print(f"[tfdnc] run directory: {run_dir}")
    return metrics


class ProtocolEvaluation(keras.callbacks.Callback):
    """Logs `val_recall@K`, `val_nmi`, ... of the data set's protocol every N epochs.

    Runs before History, TensorBoard and the checkpoint callbacks in the list,
    so they all see the metrics (of the first evaluation set of the protocol).
    """

    def __init__(self, splits, embed, every: int = 1):
        super().__init__()
        self.splits, self.embed, self.every = splits, embed, every
        self.result = None  # the latest ProtocolResult
        self.result_epoch: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        from tfdnc.protocols import run_protocol

        last = epoch + 1 == self.params.get("epochs", 0)
        if logs is None or ((epoch + 1) % self.every and not last):
            return
        result = run_protocol(self.splits, self.embed)
        self.result, self.result_epoch = result, epoch
        for key, value in next(iter(result.results.values())).items():
            logs[f"val_{key}"] = float(value)


class HistoryWriter(keras.callbacks.Callback):
    """Rewrites RUN_DIR/history.json each epoch: the logs plus K and cluster sizes."""

    def __init__(self, path: str, schedule):
        super().__init__()
        self.path = path
        self.schedule = schedule

    def on_epoch_end(self, epoch, logs=None):
        records = _read_json(self.path) if os.path.exists(self.path) else []
        # A resumed run re-does epochs after its checkpoint; keep one record each.
        records = [r for r in records if r.get("epoch", -1) < epoch]
        entry = {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}
        if self.schedule.history and self.schedule.history[-1]["epoch"] == epoch:
            entry.update(self.schedule.history[-1])
        entry["epoch"] = epoch
        records.append(entry)
        _write_json(self.path, records)


def _write_json(path: str, values) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(values, f, indent=2, default=_jsonable)
    os.replace(tmp, path)


def _jsonable(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    run(config, resume=args.resume, export=args.export, strict_images=args.strict_images,
        backup_every_steps=args.backup_every_steps, verbose=args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
