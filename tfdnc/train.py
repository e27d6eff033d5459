"""`python train.py`: Divide & Conquer training, evaluation and export in one run.

With no arguments it trains Divide & Conquer (K = 1 -> 4, multi-similarity
loss with Symmetrical Synthesis) on the generated `shapes` data set (200 train
/ 200 test classes in four families), prints Recall@K, NMI, MAP@R and mARP
before and after, and leaves a run directory: config.json, model.keras,
checkpoints/, backup/ (for --resume), clusters.npz, history.json,
metrics.json, logs/ (TensorBoard) and export/dnc/1/ (the SavedModel for
TensorFlow Serving); `tfdnc.rundir` defines the layout. Each epoch ends with
one backup generation (weights, clusters and random state committed
together, `tfdnc.training.generations`); `--resume` continues from the newest
complete one and repeats the uninterrupted run. A lock (RUN_DIR/.lock) keeps
a second process out of a run directory in use.

`run` is a short list of named steps (`prepare_run_dir`, `build_data`,
`build_model`, `build_schedule`, `build_callbacks`, `fit`, `finish`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import keras
import numpy as np

from tfdnc import clustering, rundir
from tfdnc.backbones import build_backbone, check_backbone
from tfdnc.config import (  # the flags live with the settings
    RESUME_OVERRIDES, SettingError, TrainConfig, build_parser, implied_dataset,
)
from tfdnc.data.cache import cache_decoded_images
from tfdnc.data.pipeline import image_channels, make_train_dataset
from tfdnc.data.sampling import ClusterBatchSampler
from tfdnc.data.validation import validate_splits
from tfdnc.datasets import load_dataset
from tfdnc.datasets.base import ImageSet
from tfdnc.distributed.collectives import broadcast_from_chief
from tfdnc.distributed.driver import fit_custom_loop, fit_mirrored, per_replica_dataset_fn
from tfdnc.distributed.strategy import build_strategy, is_multi_worker, synchronize_batchnorm, worker_info
from tfdnc.evaluation.callback import RetrievalEvaluation
from tfdnc.evaluation.embedding import embed_image_set, model_function
from tfdnc.evaluation.protocols import run_protocol
from tfdnc.hub_backbones import is_hub_backbone, layer_decay_multipliers
from tfdnc.losses import get_loss
from tfdnc.model import DivideAndConquerModel, load_model
from tfdnc.optimizers import LayerDecayAdam
from tfdnc.rundir import RunDir
from tfdnc.training import faults
from tfdnc.training.backup import (AtomicModelCheckpoint, FlushingTensorBoard, GenerationBackup, ResumeRefusedError,
                                   check_settings, restore_latest, save_model_atomic)
from tfdnc.training.callbacks import HistoryWriter, NonFiniteLossGuard
from tfdnc.training.generations import GenerationStore
from tfdnc.training.ema import AveragedAdam, SwapAverage
from tfdnc.training.lock import RunLock, RunLockedError
from tfdnc.training.random_state import check_random_state
from tfdnc.training.lr import WarmupDecay, base_optimizer, follow_schedule
from tfdnc.training.recluster import DistributedReclusterer, LocalReclusterer
from tfdnc.training.schedule import DivideAndConquerSchedule
from tfdnc.utils import read_json
from tfdnc.utils.errors import UserInputError, UserPathError
from tfdnc.utils.npz import UnsafeFileError, check_npz


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Preset, then config file, then explicit flags; the run's config on --resume.

    Raises `UserInputError` naming the file, flag or setting at fault (the
    command prints it as one line, exit status 2).
    """
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if f.name != "preset" and hasattr(args, f.name)}
    if args.resume:
        run_dir = overrides.get("run_dir", TrainConfig.run_dir)
        path = RunDir(run_dir).config
        if not os.path.isfile(path):
            raise UserPathError(f"--resume: {path!r} does not exist; nothing to resume in --run-dir {run_dir!r}")
        values = TrainConfig.load(path).to_dict()
        allowed = set(RESUME_OVERRIDES)
        ignored = sorted(set(overrides) - allowed - {k for k, v in overrides.items() if values.get(k) == v})
        if ignored:
            print(f"[tfdnc] --resume keeps the run's settings; ignoring {', '.join('--' + k.replace('_', '-') for k in ignored)}")
        values.update({k: v for k, v in overrides.items() if k in allowed})
        return _config_naming_the_file(values, path, {k for k in overrides if k in allowed})
    values: dict = {}
    if args.preset:
        from tfdnc.presets import get_preset

        values.update(get_preset(args.preset))
        values["preset"] = args.preset
    if args.config:
        try:
            from_file = read_json(args.config, what="--config")
        except ValueError as err:  # unreadable, or not JSON
            raise UserInputError(str(err)) from err
        if not isinstance(from_file, dict):
            raise UserInputError(f"--config {args.config!r} must hold a JSON object of settings, "
                                 f"got a {type(from_file).__name__}")
        values.update(from_file)
    if values.get("dataset") is None and "dataset" not in overrides and overrides.get("data_dir"):
        # --data-dir alone means your own images (TrainConfig implies the data set), not the generated set.
        print(f"[tfdnc] --data-dir without --dataset: --dataset {implied_dataset(overrides['data_dir'])}")
    values.update(overrides)
    if not args.config:
        config = TrainConfig.from_dict(values, source="command line")
    else:
        config = _config_naming_the_file(values, args.config, set(overrides) | set(values) - set(from_file))
    # A bad backbone (a hub: preset that is neither a KerasHub name nor a preset folder) is one line here.
    try:
        check_backbone(config.backbone, config.backbone_pooling, config.freeze_backbone_layers, config.layer_decay)
    except ValueError as err:
        raise UserInputError(str(err)) from err
    return config


def _config_naming_the_file(values: dict, path: str, not_from_file: set[str]) -> TrainConfig:
    """`TrainConfig.from_dict`; a setting out of range that the file `path` gave is named with the file."""
    try:
        return TrainConfig.from_dict(values, source=path)
    except SettingError as err:
        if err.source is None and err.setting not in not_from_file:
            raise err.from_file(path) from err
        raise


# --- the run: a short story of named steps ------------------------------------------------


def run(
    config: TrainConfig,
    resume: bool = False,
    export: bool = True,
    strict_images: bool = False,
    backup_every_steps: int | None = None,
    verbose: int = 1,
) -> dict:
    """Trains, evaluates and (optionally) exports; returns the metrics dict.

    Every worker of a multi-worker run calls it; only the chief evaluates,
    saves and exports (the others return {}).
    """
    # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs any op.
    strategy = build_strategy(config.strategy)
    chief = worker_info(strategy).is_chief
    if backup_every_steps:
        print("[tfdnc] --backup-every-steps is ignored: a backup is one whole generation at each epoch's end")
    if resume:
        # Before the lock and any write: a config.json edited since the backup is refused with
        # the run directory unchanged (issue 19: it used to restart from epoch 1 over the run).
        check_settings(GenerationStore(RunDir(config.run_dir).backup), config.to_dict(),
                       may_differ=RESUME_OVERRIDES, config_path=RunDir(config.run_dir).config)
    lock = RunLock(config.run_dir).acquire() if chief else None
    try:
        return _run(config, strategy, chief, resume, export, strict_images, verbose)
    finally:
        if lock is not None:
            lock.release()


def _run(config: TrainConfig, strategy, chief: bool, resume: bool, export: bool, strict_images: bool,
         verbose: int) -> dict:
    if resume:  # a backup that could only be read by unpickling it is refused before anything is written
        for generation in GenerationStore(RunDir(config.run_dir).backup).committed():
            check_random_state(generation.random)
            check_npz(generation.clusters, what="cluster state")
    run_dir = prepare_run_dir(config, resume, chief)
    data = build_data(config, run_dir, strict_images, chief)
    model = build_model(config, strategy, data)
    schedule = build_schedule(config, strategy, data, run_dir, verbose)  # checks K against the classes
    initial_epoch = restore(model, strategy, schedule, run_dir, config, resume, chief, verbose)
    if resume and chief:
        record_resume(run_dir, config, initial_epoch)
    embed = embed_function(model, config)
    metrics = run_dir.metrics() if resume else {}
    if "before" not in metrics and chief:
        metrics["before"] = evaluate_and_print("Before training", data.splits, embed, verbose)
        run_dir.write_metrics(metrics)
    evaluation = RetrievalEvaluation.from_protocol(data.splits, embed, every=config.eval_every)
    callbacks = build_callbacks(schedule, evaluation, run_dir, config, chief=chief)
    start = time.perf_counter()
    fit(model, strategy, data, callbacks, config, verbose, initial_epoch)
    train_seconds = time.perf_counter() - start
    if not chief:
        return {}
    return finish(model, config, run_dir, data, embed, evaluation, metrics, train_seconds, export, verbose,
                  initial_epoch=initial_epoch)


def prepare_run_dir(config: TrainConfig, resume: bool, chief: bool) -> RunDir:
    """The run directory, created, with config.json written by the chief; refuses to overwrite a run.

    A run "is there" once it committed a backup generation; a directory
    whose run died before that may be started afresh. A resume writes
    nothing here: `record_resume` does once its generation loaded.
    """
    run_dir = RunDir(config.run_dir)
    if not resume and run_dir.holds_run():
        raise FileExistsError(
            f"--run-dir {run_dir.path!r} already holds a run; pass --resume to continue it or choose another --run-dir"
        )
    run_dir.create()
    if chief and not (resume and os.path.isfile(run_dir.config)):
        config.save(run_dir.config)
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy(config.mixed_precision)
    return run_dir


def record_resume(run_dir: RunDir, config: TrainConfig, from_epoch: int) -> None:
    """Records a resume once its generation loaded: resumes.json (when, from which epoch, what changed), config.json.

    A resume may change only the settings in RESUME_OVERRIDES; changed ones
    are printed and written to config.json.
    """
    before = read_json(run_dir.config, what="run") if os.path.isfile(run_dir.config) else {}
    changed = {k: [before.get(k), v] for k, v in config.to_dict().items()
               if k in RESUME_OVERRIDES and k != "run_dir" and before.get(k) != v}
    run_dir.record_resume({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "pid": os.getpid(),
                           "from_epoch": from_epoch, "changed": changed})
    if changed:
        print("[tfdnc] --resume changes " + ", ".join(f"--{k.replace('_', '-')} {a} -> {b}"
                                                   for k, (a, b) in changed.items())
              + f" (recorded in {run_dir.resumes_file})")
    config.save(run_dir.config)


@dataclass
class TrainingData:
    """The data of a run: the splits, the (checked, maybe cached) training set and its sampler.

    Attributes:
        splits: the data set (its test / query / gallery sets are evaluated).
        train_set: the training images that passed the checks.
        labels: contiguous class ids 0..C-1 of `train_set`.
        num_classes: C.
        channels: image channels.
        sampler: the `ClusterBatchSampler` the schedule feeds.
        steps: batches per epoch.
        config: the run's settings (augmentation, image size).
    """

    splits: object
    train_set: ImageSet
    labels: np.ndarray
    num_classes: int
    channels: int
    sampler: ClusterBatchSampler
    steps: int
    config: TrainConfig

    def dataset(self, num_shards: int = 1, shard_index: int = 0):
        """The training `tf.data` pipeline (one worker's part of each batch with `num_shards` > 1)."""
        c = self.config
        return make_train_dataset(self.train_set, self.sampler, self.steps, c.image_size, labels=self.labels,
                                  crop_scale=c.crop_scale, crop_ratio=c.crop_ratio, flip=c.flip,
                                  num_shards=num_shards, shard_index=shard_index,
                                  first_epoch_timeout=None)  # the run's schedule publishes; CVPR clusters first


def build_data(config: TrainConfig, run_dir: RunDir, strict_images: bool = False, chief: bool = True) -> TrainingData:
    """Loads the data set, drops unreadable images of every split (listed in skipped.txt), caches, plans batches."""
    splits = load_dataset(config.dataset, config.data_dir, use_boxes=config.use_boxes)
    splits, report = validate_splits(splits, strict=strict_images, cache_path=run_dir.image_check)
    train_set = splits.train
    if report.lines():
        if chief:
            report.write(run_dir.skipped)
        print(f"[tfdnc] {report.summary()}; see {run_dir.skipped}")
    check_classes(config, train_set)
    classes, contiguous = np.unique(train_set.labels, return_inverse=True)
    channels = image_channels(train_set)
    if config.cache_dir:
        train_set = cache_decoded_images(train_set, config.cache_dir, config.cache_max_side, channels)
    sampler = ClusterBatchSampler(contiguous, config.classes_per_batch, config.images_per_class, seed=config.seed)
    steps = config.steps_per_epoch or math.ceil(len(train_set) / config.batch_size)
    return TrainingData(splits, train_set, contiguous, len(classes), channels, sampler, steps, config)


def check_data_location(config: TrainConfig) -> None:
    """Refuses a --data-dir that does not exist, before a run directory is made or TensorFlow runs.

    A check of the training command, not of `TrainConfig`: a run's
    config.json names a folder of the machine that trained it, and
    evaluating or reporting the run elsewhere must still read it.
    """
    if config.data_dir is not None and not os.path.exists(config.data_dir):
        raise UserPathError(f"--data-dir {config.data_dir!r} does not exist (--dataset {config.dataset})")


def check_classes(config: TrainConfig, train_set: ImageSet) -> None:
    """Refuses training classes that cannot give the run its K learners, before the model is built.

    Every learner's cluster needs 2 classes with 2 or more images
    (`clustering.max_feasible_k`, the rule the schedule applies too).
    """
    where = f"--dataset {config.dataset}" + (f" --data-dir {config.data_dir!r}" if config.data_dir else "")
    _, counts = np.unique(train_set.labels, return_counts=True)
    usable = int((counts >= 2).sum())
    if usable < 2:
        raise UserInputError(f"{where}: the training split has {usable} class(es) with 2 or more readable "
                             "images; training needs 2 or more")
    feasible = clustering.max_feasible_k(train_set.labels)
    if config.k_final > feasible:
        raise UserInputError(f"--k-final {config.k_final} is larger than the classes allow: every cluster needs "
                             f">= 2 classes with >= 2 images; the training split of {where} has {usable}, "
                             f"so K <= {feasible}")


def loss_arguments(config: TrainConfig, num_classes: int) -> dict:
    """The metric loss's keyword arguments: --loss-options, plus what other flags imply.

    --symmetrical turns on Symmetrical Synthesis; a margin loss with a learnable
    beta per class and Proxy-Anchor need the number of classes; Proxy-Anchor
    and a cross-batch memory (--xbm-size) keep one set of proxies / one memory
    per learner, so they need K and the embedding's size.
    """
    options = dict(config.loss_options)
    if config.symmetrical:
        options["symmetrical"] = True
    if config.loss == "margin" and options.get("learnable_beta"):
        options.setdefault("num_classes", num_classes)
    if config.loss == "proxy_anchor":
        options.setdefault("num_classes", num_classes)
    if config.loss == "proxy_anchor" or config.xbm_size:
        options.setdefault("embedding_dim", config.embedding_dim)
        options.setdefault("num_learners", config.k_final)
    if config.xbm_size:
        options.update(xbm_size=config.xbm_size, start_step=config.xbm_start_step,
                       batch_loss=config.xbm_batch_loss)
    return options


def build_model(config: TrainConfig, strategy, data: TrainingData) -> DivideAndConquerModel:
    """The compiled Divide & Conquer model, built under `strategy`'s scope."""
    with strategy.scope():
        loss = get_loss(config.loss, **loss_arguments(config, data.num_classes))
        with backbone_weights(config.backbone_weights) as weights:
            backbone = build_backbone(
                config.backbone, (config.image_size, config.image_size, data.channels), weights=weights,
                freeze_batchnorm=config.freeze_batchnorm, pixel_mode=config.pixel_mode,
                batchnorm_momentum=config.batchnorm_momentum, batchnorm_epsilon=config.batchnorm_epsilon,
                **_hub_options(config),
            )
        # "coupled": torch-style L2 inside the model's step; "decoupled": Keras Adam's weight_decay.
        coupled = config.weight_decay_mode == "coupled"
        mask_decay = config.weight_decay if config.mask_weight_decay is None else config.mask_weight_decay
        model = DivideAndConquerModel(
            backbone, embedding_dim=config.embedding_dim, k_final=config.k_final, mask_mode=config.mask_mode,
            initial_k=1, mask_loss_weight=config.mask_loss_weight, mask_learning_rate=config.mask_rate,
            weight_decay=config.weight_decay if coupled else 0.0,
            mask_weight_decay=mask_decay if coupled and config.mask_mode == "learnable" else 0.0,
            loss_learning_rate=config.loss_learning_rate,
        )
        decoupled = None if coupled else (config.weight_decay or None)
        schedule = learning_rate_schedule(config, data.steps)
        model.compile(optimizer=network_optimizer(config, schedule, decoupled, backbone), loss=loss,
                      jit_compile=config.jit_compile)
        if schedule is not None:
            # Masks and loss follow the network's curve at their own base rates.
            follow_schedule(model.mask_optimizer, schedule, config.mask_rate, model.optimizer)
            if model.loss_optimizer is not None:
                follow_schedule(model.loss_optimizer, schedule, config.loss_learning_rate or config.learning_rate,
                                model.optimizer)
    if strategy.num_replicas_in_sync > 1:
        # Replicas normalise with global-batch moments, as one device would.
        synchronize_batchnorm(model)
    return model


def _hub_options(config: TrainConfig) -> dict:
    """build_backbone's transformer-only arguments, given only where they apply (hub: backbones)."""
    if not is_hub_backbone(config.backbone):
        return {}
    return {"pooling": config.backbone_pooling, "freeze_layers": config.freeze_backbone_layers}


@contextlib.contextmanager
def backbone_weights(weights: str | None):
    """--backbone-weights as `build_backbone` takes it: a run's model.keras gives its backbone's weights.

    That is the hand-over of the emulated papers' regime: a supervised K = 1
    run on one data set pretrains the backbone that D&C starts from on another.
    """
    if not (isinstance(weights, str) and weights.endswith(".keras")):
        yield weights
        return
    with tempfile.TemporaryDirectory() as folder:
        yield backbone_weights_from_model(weights, os.path.join(folder, "backbone.weights.h5"))


def backbone_weights_from_model(model_path: str, out: str) -> str:
    """Writes the backbone of a trained tfdnc model (a run's model.keras) to `out` (`*.weights.h5`).

    The emulated papers' regime (docs: "The papers' regime without ImageNet")
    pretrains with a supervised K = 1 run on one data set and starts D&C on
    another from its backbone: `train.py --backbone-weights RUN/model.keras`
    calls this. Returns `out`.

    Raises:
        ValueError naming --backbone-weights when the file holds no tfdnc model with a backbone.
    """
    try:
        model = load_model(model_path, compile=False)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"--backbone-weights {model_path!r}: not a model.keras saved by tfdnc ({exc})") from exc
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, keras.Model):
        raise ValueError(f"--backbone-weights {model_path!r}: the model has no backbone to hand over")
    from tfdnc.pretrain.handoff import check_weights_path

    backbone.save_weights(check_weights_path(out, "--backbone-weights"))
    return out


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int) -> WarmupDecay | None:
    """The network's `WarmupDecay` over the whole run; None for a constant rate without warm-up."""
    if config.lr_schedule == "constant" and not config.warmup_epochs:
        return None  # a plain float rate: the optimizer state of runs from before schedules existed
    return WarmupDecay(config.learning_rate, total_steps=config.epochs * steps_per_epoch,
                       # a warm-up never spans the whole run (it would never reach the rate)
                       warmup_steps=min(config.warmup_epochs, config.epochs - 1) * steps_per_epoch,
                       decay=config.lr_schedule,
                       milestones=config.lr_milestones, gamma=config.lr_gamma)


def network_optimizer(config: TrainConfig, schedule: WarmupDecay | None, weight_decay: float | None,
                      backbone: keras.Model):
    """Adam of backbone and head, at `schedule` (or the constant rate), averaging its weights with --ema.

    With --layer-decay < 1 (hub: transformers), `LayerDecayAdam` scales each
    block's rate (`TrainConfig` refuses --ema with it).
    """
    rate = schedule if schedule is not None else config.learning_rate
    if config.layer_decay != 1.0:
        return LayerDecayAdam(rate, weight_decay=weight_decay,
                              lr_multipliers=layer_decay_multipliers(backbone, config.layer_decay))
    if config.ema:
        return AveragedAdam(rate, weight_decay=weight_decay, use_ema=True, ema_momentum=config.ema_momentum)
    return keras.optimizers.Adam(rate, weight_decay=weight_decay)


def embed_function(model: keras.Model, config: TrainConfig):
    """ImageSet -> (N, d) embeddings under the evaluation transform (any strategy, multi-worker too)."""
    call = model_function(model)

    def embed(image_set: ImageSet) -> np.ndarray:
        return embed_image_set(call, image_set, config.image_size, config.eval_resize, batch_size=256,
                               dim=model.embedding_dim)

    return embed


def evaluate_and_print(title: str, splits, embed, verbose: int = 1, result=None) -> dict:
    """Runs the data set's protocol (unless `result` is given), prints its table, returns it as a dict."""
    result = result or run_protocol(splits, embed, progress=verbose > 0)
    print(f"\n{title}\n{result.table()}")
    return result.to_dict()


def build_schedule(config: TrainConfig, strategy, data: TrainingData, run_dir: RunDir,
                   verbose: int) -> DivideAndConquerSchedule:
    """The D&C schedule; under several workers it re-clusters with them.

    It writes no cluster files: the backup generations hold its state
    (`GenerationBackup`, which also copies it to RUN_DIR/clusters.npz).
    """
    options = dict(image_size=config.image_size, resize_size=config.eval_resize,
                   cluster_features=config.cluster_features, kmeans_iters=config.kmeans_iters)
    reclusterer = (DistributedReclusterer(strategy, data.train_set, **options) if is_multi_worker(strategy)
                   else LocalReclusterer(data.train_set, **options))
    return DivideAndConquerSchedule(
        data.sampler, reclusterer=reclusterer, k_final=config.k_final, growth=config.growth,
        recluster_every=config.recluster_every, full_embedding_epoch=config.full_embedding_epoch,
        final_k1_epochs=config.final_k1_epochs, freeze_backbone_after_recluster=config.freeze_backbone_after_recluster,
        seed=config.seed, verbose=verbose,
    )


def restore(model, strategy, schedule, run_dir: RunDir, config: TrainConfig, resume: bool, chief: bool,
            verbose: int) -> int:
    """The epoch to start at: 0, or after --resume the newest complete backup generation, loaded.

    The generation holds the weights, the cluster state and the random
    state of one epoch; the learning rate comes from the config (a resume
    may lower it, see RESUME_OVERRIDES). Under several workers the chief
    picks the generation and every worker loads that one.
    """
    store = GenerationStore(run_dir.backup)
    if not resume:
        if chief:
            store.clean()
        schedule.resume_from(None)  # never the cluster files of a run that died before its first backup
        return 0
    chosen = None
    if is_multi_worker(strategy):
        latest = store.latest() if chief else None
        chosen = int(broadcast_from_chief(strategy, np.array([latest.generation if latest else 0]), (1,))[0])
    with strategy.scope():  # optimizer slots built here must be the strategy's variables
        start = restore_latest(model, schedule, store, verbose=verbose if chief else 0, generation=chosen,
                               writer=chief)
        if not isinstance(base_optimizer(model.optimizer)._learning_rate, WarmupDecay):
            model.optimizer.learning_rate.assign(config.learning_rate)  # a schedule is rebuilt from the config
            model.mask_optimizer.learning_rate.assign(config.mask_rate)  # follows a new rate with --mask-lr-mult
    return start


def nonfinite_advice(run_dir: RunDir, config: TrainConfig):
    """The advice of the non-finite loss error: a command that works, naming only what exists when it fires."""

    def advice() -> str:
        lower = f"{config.learning_rate / 10:g}"
        latest = GenerationStore(run_dir.backup).latest()
        if latest is None:
            return (f"No epoch was completed (no backup generation in {run_dir.backup}), so start again with a "
                    f"lower learning rate: python train.py --run-dir {run_dir.path} ... --learning-rate {lower}, "
                    "or check the input data.")
        return (f"The last good backup is {latest.directory} ({latest.epoch} epoch(s) done). Resume it with a lower "
                f"learning rate: python train.py --run-dir {run_dir.path} --resume --learning-rate {lower} "
                "(recorded in resumes.json), or check the input data.")

    return advice


def build_callbacks(schedule, evaluation, run_dir: RunDir, config: TrainConfig, *, chief: bool) -> list:
    """The callbacks of `fit`, in the order they must run.

    The schedule comes before the evaluation (which must see the epoch's
    phase) and before the backup and checkpoints (which must save grown
    masks and the new clusters); the evaluation before History /
    TensorBoard / checkpoints (they log its metrics); the backup last, so
    an epoch whose generation is committed has its history, last.keras and
    TensorBoard summaries on disk (a kill right after the last commit left
    them one epoch old, issue 19). Every worker trains and re-clusters; the
    chief alone evaluates, writes files, backs up and checkpoints.
    """
    callbacks = [NonFiniteLossGuard(checkpoint_hint=nonfinite_advice(run_dir, config)), schedule]
    if chief:
        average = SwapAverage()  # --ema: the evaluation sees the averaged weights, the backup the trained ones
        callbacks += [average.swap_in, evaluation, average.swap_out, HistoryWriter(run_dir, schedule),
                      AtomicModelCheckpoint(run_dir.last_checkpoint), FlushingTensorBoard(run_dir.logs),
                      GenerationBackup(GenerationStore(run_dir.backup), schedule, settings=config.to_dict())]
    return callbacks


def fit(model: keras.Model, strategy, data: TrainingData, callbacks: list, config: TrainConfig, verbose: int,
        initial_epoch: int = 0) -> None:
    """Trains with the loop the strategy needs: Keras `fit`, `fit` under MirroredStrategy, or the multi-worker loop."""
    epochs = config.epochs
    if initial_epoch >= epochs:
        print(f"[tfdnc] the backup has {initial_epoch} epoch(s) done of {epochs}: nothing left to train")
    if is_multi_worker(strategy):
        fit_custom_loop(model, strategy, per_replica_dataset_fn(data.dataset, data.sampler.batch_size),
                        steps_per_epoch=data.steps, epochs=epochs, callbacks=callbacks, verbose=verbose,
                        initial_epoch=initial_epoch)
    elif config.strategy == "mirrored":
        fit_mirrored(model, strategy, data.dataset(), steps_per_epoch=data.steps, epochs=epochs,
                     callbacks=callbacks, verbose=verbose, shuffle=False, initial_epoch=initial_epoch)
    else:
        model.fit(data.dataset(), steps_per_epoch=data.steps, epochs=epochs, callbacks=callbacks, verbose=verbose,
                  shuffle=False, initial_epoch=initial_epoch)


def finish(model, config: TrainConfig, run_dir: RunDir, data: TrainingData, embed, evaluation, metrics: dict,
           train_seconds: float, export: bool, verbose: int = 1, *, initial_epoch: int = 0) -> dict:
    """Saves model.keras, evaluates the trained model, exports it if asked and writes metrics.json.

    A resume with nothing left to train (`initial_epoch` >= epochs: killed
    after its last generation) also rewrites last.keras, which a run killed
    there by an older tfdnc left one epoch old.
    """
    save_model_atomic(model, run_dir.model)
    if initial_epoch >= config.epochs:
        save_model_atomic(model, run_dir.last_checkpoint)
    # The last epoch's evaluation already scored these weights; reuse it.
    final = evaluation.result if evaluation.result_epoch == config.epochs - 1 else None
    metrics["after"] = evaluate_and_print("After training", data.splits, embed, verbose, result=final)
    metrics["train_seconds"] = metrics.get("train_seconds", 0.0) + train_seconds
    metrics["K"] = model.num_learners
    metrics.update(model.masks.statistics())  # mask_cosine, mask_off_share: do the subspaces divide?
    if model.num_learners > 1:
        print(f"[tfdnc] the {model.num_learners} masks: mean pairwise cosine {metrics['mask_cosine']:.3f}, "
              f"{100 * metrics['mask_off_share']:.1f}% of their entries switched off (< 0.1 x the mask's largest)")
    if export:
        from tfdnc.exporting import export_run

        faults.kill_point("export", delay=0.5)
        path = export_run(run_dir.path, run_dir.export_base, rundir.EXPORT_NAME)
        metrics["export"] = path
        print(f"[tfdnc] exported SavedModel: {path}")
    run_dir.write_metrics(metrics)
    print(f"[tfdnc] run directory: {run_dir.path}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    """`python train.py` / `tfdnc train` once its arguments parsed (`tfdnc.cli.run_command` calls it).

    Settings and paths are checked before the run directory is made and any
    data is read, the data's classes before the model is built; each bad one
    raises `UserInputError`, which the command prints as one line (exit 2).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except UserInputError:
        raise
    except (ValueError, FileNotFoundError) as exc:  # a preset, file or setting, named in the message
        raise UserInputError(str(exc)) from exc
    check_data_location(config)
    try:
        run(config, resume=args.resume, export=args.export, strict_images=args.strict_images,
            backup_every_steps=args.backup_every_steps, verbose=args.verbose)
    except (RunLockedError, UnsafeFileError, ResumeRefusedError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from tfdnc.utils.errors import run_reporting_errors

    sys.exit(run_reporting_errors("python -m tfdnc.train", main, debug="--debug" in sys.argv))
