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

`run` is a short list of named steps (`prepare_run_dir`,
`TrainingData.from_config`, `build_model`, `build_schedule`, `restore`,
`build_callbacks`, `fit`, `finish`); each gets the section of the settings it
uses (`TrainConfig.data_config`, `model_config`, `loss_config`, ...), the
loss is built by `tfdnc.losses.loss_from_config` from the facts it declares
it needs, and the worker's role is derived from the strategy once (`WorkerRole`).
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
    RESUME_OVERRIDES, DataConfig, ModelConfig, ScheduleConfig, SettingError, TrainConfig, build_parser, implied_dataset,
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
from tfdnc.losses import loss_from_config
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


@dataclass(frozen=True)
class WorkerRole:
    """What this process is in the run, derived once from the strategy.

    Attributes:
        chief: evaluates, writes files, backs up and exports (the only
            process without several workers).
        multi_worker: one of several workers (MultiWorkerMirroredStrategy):
            the custom training loop, re-clustering together.
        mirrored: the GPUs of this host (MirroredStrategy).
    """

    chief: bool
    multi_worker: bool
    mirrored: bool

    @classmethod
    def of(cls, strategy, strategy_name: str) -> "WorkerRole":
        return cls(worker_info(strategy).is_chief, is_multi_worker(strategy), strategy_name == "mirrored")


def run(config: TrainConfig, resume: bool = False, export: bool = True, strict_images: bool = False,
        verbose: int = 1) -> dict:
    """Trains, evaluates and (optionally) exports; returns the metrics dict.

    Every worker of a multi-worker run calls it; only the chief evaluates,
    saves and exports (the others return {}).
    """
    # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs any op.
    strategy = build_strategy(config.strategy)
    role = WorkerRole.of(strategy, config.strategy)
    backups = GenerationStore(RunDir(config.run_dir).backup)
    if resume:
        # Before the lock and any write: a config.json edited since the backup is refused with
        # the run directory unchanged (issue 19: it used to restart from epoch 1 over the run).
        check_settings(backups, config.to_dict(), may_differ=RESUME_OVERRIDES, config_path=RunDir(config.run_dir).config)
        for generation in backups.committed():  # a backup only unpickling could read is refused before any write
            check_random_state(generation.random)
            check_npz(generation.clusters, what="cluster state")
    lock = RunLock(config.run_dir).acquire() if role.chief else None
    try:
        return _run(config, strategy, role, backups, resume, export, strict_images, verbose)
    finally:
        if lock is not None:
            lock.release()


def _run(config: TrainConfig, strategy, role: WorkerRole, backups: GenerationStore, resume: bool, export: bool,
         strict_images: bool, verbose: int) -> dict:
    """The story of a run; each step gets the section of the settings it uses."""
    chief = role.chief
    run_dir = prepare_run_dir(config, resume, chief)
    data = TrainingData.from_config(config.data_config, run_dir=run_dir, strict_images=strict_images, chief=chief,
                                    seed=config.seed, k_final=config.k_final)
    model = build_model(config.model_config, strategy, data,
                        loss=loss_from_config(config.loss_config, **data.facts(config.model_config)),
                        learning_rate=learning_rate_schedule(config.schedule_config, config.learning_rate, data.steps),
                        jit_compile=config.jit_compile)
    schedule = build_schedule(config, strategy, data, run_dir, verbose)  # checks K against the classes
    initial_epoch = restore(model, strategy, schedule, backups, config.model_config, resume, role, verbose)
    if resume and chief:
        record_resume(run_dir, config, initial_epoch)
    embed = embed_function(model, config.data_config)
    metrics = run_dir.metrics() if resume else {}
    if "before" not in metrics and chief:
        metrics["before"] = evaluate_and_print("Before training", data.splits, embed, verbose)
        run_dir.write_metrics(metrics)
    evaluation = RetrievalEvaluation.from_protocol(data.splits, embed, every=config.eval_every)
    callbacks = build_callbacks(schedule, evaluation, run_dir, config, chief=chief, backups=backups)
    start = time.perf_counter()
    fit(model, strategy, data, callbacks, config.epochs, role, verbose, initial_epoch)
    train_seconds = time.perf_counter() - start
    if not chief:
        return {}
    return finish(model, config.epochs, run_dir, data, embed, evaluation, metrics, train_seconds, export, verbose,
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
    """The data of a run: the splits, the (checked, maybe cached) training set, its sampler and augmentation.

    Built by `TrainingData.from_config(data_section, ...)`.

    Attributes:
        splits: the data set (its test / query / gallery sets are evaluated).
        train_set: the training images that passed the checks.
        labels: contiguous class ids 0..C-1 of `train_set`.
        num_classes: C.
        channels: image channels.
        sampler: the `ClusterBatchSampler` the schedule feeds.
        steps: batches per epoch.
        image_size, crop_scale, crop_ratio, flip: the training augmentation
            (`tfdnc.data.pipeline.make_train_dataset`).
    """

    splits: object
    train_set: ImageSet
    labels: np.ndarray
    num_classes: int
    channels: int
    sampler: ClusterBatchSampler
    steps: int
    image_size: int
    crop_scale: tuple
    crop_ratio: tuple
    flip: bool

    @classmethod
    def from_config(cls, section: DataConfig, *, run_dir: RunDir, seed: int, k_final: int,
                    strict_images: bool = False, chief: bool = True) -> "TrainingData":
        """Loads the data set, drops unreadable images of every split (listed in skipped.txt), caches, plans batches.

        `k_final` (the model's K) is checked against the training classes
        before any model is built; `seed` seeds the batch sampler.
        """
        splits = load_dataset(section.dataset, section.data_dir, use_boxes=section.use_boxes)
        splits, report = validate_splits(splits, strict=strict_images, cache_path=run_dir.image_check)
        train_set = splits.train
        if report.lines():
            if chief:
                report.write(run_dir.skipped)
            print(f"[tfdnc] {report.summary()}; see {run_dir.skipped}")
        check_classes(section, k_final, train_set)
        classes, contiguous = np.unique(train_set.labels, return_inverse=True)
        channels = image_channels(train_set)
        if section.cache_dir:
            train_set = cache_decoded_images(train_set, section.cache_dir, section.cache_max_side, channels)
        sampler = ClusterBatchSampler(contiguous, section.classes_per_batch, section.images_per_class, seed=seed)
        steps = section.steps_per_epoch or math.ceil(len(train_set) / section.batch_size)
        return cls(splits, train_set, contiguous, len(classes), channels, sampler, steps, section.image_size,
                   tuple(section.crop_scale), tuple(section.crop_ratio), section.flip)

    def facts(self, model: ModelConfig) -> dict:
        """What a loss may declare it needs (`tfdnc.losses.FACTS`): classes, embedding size, learners."""
        return {"num_classes": self.num_classes, "embedding_dim": model.embedding_dim, "num_learners": model.k_final}

    def dataset(self, num_shards: int = 1, shard_index: int = 0):
        """The training `tf.data` pipeline (one worker's part of each batch with `num_shards` > 1)."""
        return make_train_dataset(self.train_set, self.sampler, self.steps, self.image_size, labels=self.labels,
                                  crop_scale=self.crop_scale, crop_ratio=self.crop_ratio, flip=self.flip,
                                  num_shards=num_shards, shard_index=shard_index,
                                  first_epoch_timeout=None)  # the run's schedule publishes; CVPR clusters first


def check_data_location(config: TrainConfig) -> None:
    """Refuses a --data-dir that does not exist, before a run directory is made or TensorFlow runs.

    A check of the training command, not of `TrainConfig`: a run's
    config.json names a folder of the machine that trained it, and
    evaluating or reporting the run elsewhere must still read it.
    """
    if config.data_dir is not None and not os.path.exists(config.data_dir):
        raise UserPathError(f"--data-dir {config.data_dir!r} does not exist (--dataset {config.dataset})")


def check_classes(section: DataConfig, k_final: int, train_set: ImageSet) -> None:
    """Refuses training classes that cannot give the run its K learners, before the model is built.

    Every learner's cluster needs 2 classes with 2 or more images
    (`clustering.max_feasible_k`, the rule the schedule applies too).
    """
    where = f"--dataset {section.dataset}" + (f" --data-dir {section.data_dir!r}" if section.data_dir else "")
    _, counts = np.unique(train_set.labels, return_counts=True)
    usable = int((counts >= 2).sum())
    if usable < 2:
        raise UserInputError(f"{where}: the training split has {usable} class(es) with 2 or more readable "
                             "images; training needs 2 or more")
    feasible = clustering.max_feasible_k(train_set.labels)
    if k_final > feasible:
        raise UserInputError(f"--k-final {k_final} is larger than the classes allow: every cluster needs "
                             f">= 2 classes with >= 2 images; the training split of {where} has {usable}, "
                             f"so K <= {feasible}")


def build_model(section: ModelConfig, strategy, data: TrainingData, *, loss, learning_rate,
                jit_compile: bool = False) -> DivideAndConquerModel:
    """The compiled Divide & Conquer model of the model section, built under `strategy`'s scope.

    Args:
        section: the model settings (backbone, embedding, masks, optimisers).
        data: the training data (image size and channels).
        loss: the metric loss (`tfdnc.losses.loss_from_config`).
        learning_rate: the network's `WarmupDecay`, or None for the constant
            `section.learning_rate` (`learning_rate_schedule`).
        jit_compile: compile the training step with XLA.
    """
    with strategy.scope():
        backbone = _backbone(section, (data.image_size, data.image_size, data.channels))
        # "coupled": torch-style L2 inside the model's step; "decoupled": Keras Adam's weight_decay.
        coupled = section.weight_decay_mode == "coupled"
        mask_decay = section.weight_decay if section.mask_weight_decay is None else section.mask_weight_decay
        model = DivideAndConquerModel(
            backbone, embedding_dim=section.embedding_dim, k_final=section.k_final, mask_mode=section.mask_mode,
            initial_k=1, mask_loss_weight=section.mask_loss_weight, mask_learning_rate=section.mask_rate,
            weight_decay=section.weight_decay if coupled else 0.0,
            mask_weight_decay=mask_decay if coupled and section.mask_mode == "learnable" else 0.0,
            loss_learning_rate=section.loss_learning_rate,
        )
        decoupled = None if coupled else (section.weight_decay or None)
        model.compile(optimizer=network_optimizer(section, learning_rate, decoupled, backbone), loss=loss,
                      jit_compile=jit_compile)
        if learning_rate is not None:
            # Masks and loss follow the network's curve at their own base rates.
            follow_schedule(model.mask_optimizer, learning_rate, section.mask_rate, model.optimizer)
            if model.loss_optimizer is not None:
                follow_schedule(model.loss_optimizer, learning_rate,
                                section.loss_learning_rate or section.learning_rate, model.optimizer)
    if strategy.num_replicas_in_sync > 1:
        # Replicas normalise with global-batch moments, as one device would.
        synchronize_batchnorm(model)
    return model


def _backbone(section: ModelConfig, input_shape: tuple) -> keras.Model:
    """The backbone of the model section, with its pretrained weights (a run's model.keras too)."""
    with backbone_weights(section.backbone_weights) as weights:
        return build_backbone(
            section.backbone, input_shape, weights=weights,
            freeze_batchnorm=section.freeze_batchnorm, pixel_mode=section.pixel_mode,
            batchnorm_momentum=section.batchnorm_momentum, batchnorm_epsilon=section.batchnorm_epsilon,
            **_hub_options(section),
        )


def _hub_options(section: ModelConfig) -> dict:
    """build_backbone's transformer-only arguments, given only where they apply (hub: backbones)."""
    if not is_hub_backbone(section.backbone):
        return {}
    return {"pooling": section.backbone_pooling, "freeze_layers": section.freeze_backbone_layers}


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


def learning_rate_schedule(section: ScheduleConfig, learning_rate: float, steps_per_epoch: int) -> WarmupDecay | None:
    """The network's `WarmupDecay` at `learning_rate` over the whole run; None for a constant rate without warm-up."""
    if section.lr_schedule == "constant" and not section.warmup_epochs:
        return None  # a plain float rate: the optimizer state of runs from before schedules existed
    return WarmupDecay(learning_rate, total_steps=section.epochs * steps_per_epoch,
                       # a warm-up never spans the whole run (it would never reach the rate)
                       warmup_steps=min(section.warmup_epochs, section.epochs - 1) * steps_per_epoch,
                       decay=section.lr_schedule,
                       milestones=section.lr_milestones, gamma=section.lr_gamma)


def network_optimizer(section: ModelConfig, schedule: WarmupDecay | None, weight_decay: float | None,
                      backbone: keras.Model):
    """Adam of backbone and head, at `schedule` (or the constant rate), averaging its weights with --ema.

    With --layer-decay < 1 (hub: transformers), `LayerDecayAdam` scales each
    block's rate (`TrainConfig` refuses --ema with it).
    """
    rate = schedule if schedule is not None else section.learning_rate
    if section.layer_decay != 1.0:
        return LayerDecayAdam(rate, weight_decay=weight_decay,
                              lr_multipliers=layer_decay_multipliers(backbone, section.layer_decay))
    if section.ema:
        return AveragedAdam(rate, weight_decay=weight_decay, use_ema=True, ema_momentum=section.ema_momentum)
    return keras.optimizers.Adam(rate, weight_decay=weight_decay)


def embed_function(model: keras.Model, section: DataConfig):
    """ImageSet -> (N, d) embeddings under the data section's evaluation transform (any strategy, multi-worker too)."""
    call = model_function(model)

    def embed(image_set: ImageSet) -> np.ndarray:
        return embed_image_set(call, image_set, section.image_size, section.eval_resize, batch_size=256,
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


def restore(model, strategy, schedule, store: GenerationStore, section: ModelConfig, resume: bool,
            role: WorkerRole, verbose: int) -> int:
    """The epoch to start at: 0, or after --resume the newest complete backup generation, loaded.

    The generation holds the weights, the cluster state and the random
    state of one epoch; the learning rate comes from the config (a resume
    may lower it, see RESUME_OVERRIDES). Under several workers the chief
    picks the generation and every worker loads that one.
    """
    chief = role.chief
    if not resume:
        if chief:
            store.clean()
        schedule.resume_from(None)  # never the cluster files of a run that died before its first backup
        return 0
    chosen = None
    if role.multi_worker:
        latest = store.latest() if chief else None
        chosen = int(broadcast_from_chief(strategy, np.array([latest.generation if latest else 0]), (1,))[0])
    with strategy.scope():  # optimizer slots built here must be the strategy's variables
        start = restore_latest(model, schedule, store, verbose=verbose if chief else 0, generation=chosen,
                               writer=chief)
        if not isinstance(base_optimizer(model.optimizer)._learning_rate, WarmupDecay):
            model.optimizer.learning_rate.assign(section.learning_rate)  # a schedule is rebuilt from the config
            model.mask_optimizer.learning_rate.assign(section.mask_rate)  # follows a new rate with --mask-lr-mult
    return start


def nonfinite_advice(run_dir: RunDir, config: ModelConfig, backups: GenerationStore | None = None):
    """The advice of the non-finite loss error: a command that works, naming only what exists when it fires."""
    backups = backups or GenerationStore(run_dir.backup)

    def advice() -> str:
        lower = f"{config.learning_rate / 10:g}"
        latest = backups.latest()
        if latest is None:
            return (f"No epoch was completed (no backup generation in {run_dir.backup}), so start again with a "
                    f"lower learning rate: python train.py --run-dir {run_dir.path} ... --learning-rate {lower}, "
                    "or check the input data.")
        return (f"The last good backup is {latest.directory} ({latest.epoch} epoch(s) done). Resume it with a lower "
                f"learning rate: python train.py --run-dir {run_dir.path} --resume --learning-rate {lower} "
                "(recorded in resumes.json), or check the input data.")

    return advice


def build_callbacks(schedule, evaluation, run_dir: RunDir, config: TrainConfig, *, chief: bool,
                    backups: GenerationStore | None = None) -> list:
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
    backups = backups or GenerationStore(run_dir.backup)
    callbacks = [NonFiniteLossGuard(checkpoint_hint=nonfinite_advice(run_dir, config, backups)), schedule]
    if chief:
        average = SwapAverage()  # --ema: the evaluation sees the averaged weights, the backup the trained ones
        callbacks += [average.swap_in, evaluation, average.swap_out, HistoryWriter(run_dir, schedule),
                      AtomicModelCheckpoint(run_dir.last_checkpoint), FlushingTensorBoard(run_dir.logs),
                      GenerationBackup(backups, schedule, settings=config.to_dict())]
    return callbacks


def fit(model: keras.Model, strategy, data: TrainingData, callbacks: list, epochs: int, role: WorkerRole,
        verbose: int, initial_epoch: int = 0) -> None:
    """Trains with the loop the worker's role needs: Keras `fit`, `fit` under MirroredStrategy, or the multi-worker loop."""
    if initial_epoch >= epochs:
        print(f"[tfdnc] the backup has {initial_epoch} epoch(s) done of {epochs}: nothing left to train")
    if role.multi_worker:
        fit_custom_loop(model, strategy, per_replica_dataset_fn(data.dataset, data.sampler.batch_size),
                        steps_per_epoch=data.steps, epochs=epochs, callbacks=callbacks, verbose=verbose,
                        initial_epoch=initial_epoch)
    elif role.mirrored:
        fit_mirrored(model, strategy, data.dataset(), steps_per_epoch=data.steps, epochs=epochs,
                     callbacks=callbacks, verbose=verbose, shuffle=False, initial_epoch=initial_epoch)
    else:
        model.fit(data.dataset(), steps_per_epoch=data.steps, epochs=epochs, callbacks=callbacks, verbose=verbose,
                  shuffle=False, initial_epoch=initial_epoch)


def finish(model, epochs: int, run_dir: RunDir, data: TrainingData, embed, evaluation, metrics: dict,
           train_seconds: float, export: bool, verbose: int = 1, *, initial_epoch: int = 0) -> dict:
    """Saves model.keras, evaluates the trained model, exports it if asked and writes metrics.json.

    A resume with nothing left to train (`initial_epoch` >= epochs: killed
    after its last generation) also rewrites last.keras, which a run killed
    there by an older tfdnc left one epoch old.
    """
    save_model_atomic(model, run_dir.model)
    if initial_epoch >= epochs:
        save_model_atomic(model, run_dir.last_checkpoint)
    # The last epoch's evaluation already scored these weights; reuse it.
    final = evaluation.result if evaluation.result_epoch == epochs - 1 else None
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
        run(config, resume=args.resume, export=args.export, strict_images=args.strict_images, verbose=args.verbose)
    except (RunLockedError, UnsafeFileError, ResumeRefusedError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from tfdnc.utils.errors import run_reporting_errors

    sys.exit(run_reporting_errors("python -m tfdnc.train", main, debug="--debug" in sys.argv))
