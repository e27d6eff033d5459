"""The training configuration: one dataclass, readable from JSON and the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import math
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any

from tfdnc.utils import read_json, write_json
from tfdnc.utils.errors import UserInputError
from tfdnc.utils.typecheck import type_problem

# Old setting names (config keys, flags, attributes) -> the one name now in use,
# Keras's word where Keras has one (`learning_rate`). Old names still work.
DEPRECATED_NAMES = {
    "lr": "learning_rate",
    "mask_lr": "mask_learning_rate",
    "loss_lr": "loss_learning_rate",
    "symm": "symmetrical",
}
WEIGHT_DECAY_MODES = ("coupled", "decoupled")  # how train.build_model applies weight decay
MIXED_PRECISION = (None, "mixed_float16", "mixed_bfloat16")


def _allowed_values() -> tuple:
    """The allowed values, from the modules that use them (imported here, not at import time:
    `tfdnc train --help` builds its parser from this module without TensorFlow)."""
    from tfdnc.distributed.strategy import STRATEGIES
    from tfdnc.layers.masks import MASK_MODES
    from tfdnc.losses import LOSSES
    from tfdnc.training.phases import GROWTH
    from tfdnc.training.recluster import CLUSTER_FEATURES

    return STRATEGIES, MASK_MODES, tuple(LOSSES), GROWTH, CLUSTER_FEATURES


class SettingError(UserInputError):
    """A setting of the wrong type or out of range.

    Attributes:
        setting: the setting's name (`crop_scale`).
        reason: what is wrong ("must be a list of 2 numbers, got 5").
        source: the file it came from, or None (then the message names the flag).

    Example:
    >>> str(SettingError("crop_scale", "must be a list of 2 numbers, got 5", source="cfg.json"))
    "cfg.json: setting 'crop_scale' must be a list of 2 numbers, got 5"
    """

    def __init__(self, setting: str, reason: str, source: str | None = None):
        self.setting, self.reason, self.source = setting, reason, source
        where = f"{source}: setting {setting!r}" if source else f"TrainConfig: --{setting.replace('_', '-')}"
        super().__init__(f"{where} {reason}")

    def from_file(self, source: str) -> "SettingError":
        """The same error, naming the file the setting came from."""
        return SettingError(self.setting, self.reason, source)


def _datasets() -> tuple:
    """The data set names and those with bounding boxes, from `tfdnc.datasets` (loaded on use, as above)."""
    from tfdnc.datasets import DATASETS, WITH_BOXES

    return tuple(DATASETS), WITH_BOXES


@functools.cache
def _setting_types(cls: type | None = None) -> dict[str, Any]:
    """The type hint of every setting of `cls` (TrainConfig, or a subclass with more settings)."""
    return typing.get_type_hints(cls or TrainConfig)


def check_setting_types(values: dict[str, Any], source: str, cls: type | None = None) -> None:
    """Raises `SettingError` naming `source` and the setting for a value of the wrong type.

    Driven by `TrainConfig`'s type hints, so a new setting is checked
    without an edit here. Unknown names are left to `TrainConfig.from_dict`.

    Example:
    >>> check_setting_types({"embedding_dim": "64"}, "cfg.json")
    Traceback (most recent call last):
    tfdnc.config.SettingError: cfg.json: setting 'embedding_dim' must be an integer, got "64" (a string)
    """
    hints = _setting_types(cls)
    for name, value in values.items():
        problem = type_problem(value, hints[name]) if name in hints else None
        if problem:
            raise SettingError(name, problem, source)


def loss_option_names(loss_class: type) -> set[str] | None:
    """The keyword arguments a loss's constructor takes, through its chain of `**kwargs`; None: any.

    Each `__init__` of the class's MRO adds its named parameters until one
    takes no `**kwargs` (`MetricLoss.__init__`), so an option no class of the
    chain knows is refused before the data is loaded, not by a `TypeError`
    when the model is built.
    """
    names: set[str] = set()
    for klass in loss_class.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = list(inspect.signature(init).parameters.values())[1:]  # without self
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
    return None


def _loss_option_types(loss_class: type) -> dict[str, Any]:
    """Type hints of the constructor arguments along the chain (those that cannot be resolved are skipped)."""
    hints: dict[str, Any] = {}
    for klass in reversed(loss_class.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or not hasattr(init, "__code__"):
            continue
        try:
            hints.update(typing.get_type_hints(init))
        except (NameError, TypeError):  # a hint naming a type its module only imports to type-check
            continue
    hints.pop("return", None)
    return hints


def __getattr__(name: str):
    if name == "LOSSES":  # the loss names, as before (loaded on use)
        return _allowed_values()[2]
    raise AttributeError(f"module 'tfdnc.config' has no attribute {name!r}")


def rename_deprecated(values: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """`values` with deprecated setting names replaced by their new names (a DeprecationWarning each)."""
    values = dict(values)
    for old, new in DEPRECATED_NAMES.items():
        if old in values:
            if new in values:
                raise ValueError(f"{source}: give {new!r} or its deprecated name {old!r}, not both")
            warnings.warn(f"{source}: setting {old!r} is deprecated; it is now {new!r}", DeprecationWarning,
                          stacklevel=3)
            values[new] = values.pop(old)
    return values


@dataclass
class TrainConfig:
    """Everything a Divide & Conquer run needs; defaults: the quick-start run.

    Defaults follow the TPAMI reference (learnable masks, K grown by
    doubling every T epochs) scaled down to the generated `shapes` data set,
    with the loss and Symm setting the peer benchmark found best; the
    paper-sized settings are the presets in `tfdnc.presets`.
    """

    preset: str | None = None  # the paper preset the run started from (informational)
    # data
    # None: "folder" when data_dir is given (a ".csv" file: "csv"), else the generated "shapes",
    # 4 families: where D&C shows its gain (BENCHMARKS.md)
    dataset: str | None = None
    data_dir: str | None = None
    image_size: int = 32  # side of the (square) crop the network sees
    resize_size: int | None = None  # eval: resize shorter side, then centre crop; None: image_size
    crop_scale: tuple[float, float] = (0.5, 1.0)  # RandomResizedCrop area range (paper: 0.08, 1)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False  # horizontal flips (on for natural images; off for digits)
    use_boxes: bool = False  # crop to bounding boxes where the data set has them
    cache_dir: str | None = None  # decode training images once into this folder (tfdnc.data.cache)
    cache_max_side: int | None = None  # shrink cached images to this shorter side (None: full size)
    # network
    backbone: str = "small_cnn"
    backbone_weights: str | None = None  # None | "imagenet" | path
    pixel_mode: str | None = None
    freeze_batchnorm: bool = False  # fixed BatchNorm statistics; gamma / beta still train (as the papers)
    batchnorm_momentum: float | None = None  # None: the backbone's default (small_cnn: 0.9, torch's)
    batchnorm_epsilon: float | None = None  # None: the backbone's default (small_cnn: 1e-5, torch's)
    # hub: transformer backbones (tfdnc.hub_backbones)
    backbone_pooling: str | None = None  # "class" token or "mean" of patch tokens; None: class token if any
    freeze_backbone_layers: int = 0  # the patch embedding and the first N transformer blocks do not train
    layer_decay: float = 1.0  # layer-wise learning-rate decay over the blocks (BEiT / MAE); 1: off
    embedding_dim: int = 64
    # divide & conquer
    k_final: int = 4  # one learner per family of the default data
    growth: str = "double"  # "double" (TPAMI) or "fixed" (CVPR: K = k_final from the start)
    mask_mode: str = "learnable"
    mask_loss_weight: float = 0.01
    mask_learning_rate: float = 1e-3
    # masks' rate as a multiple of --learning-rate (TPAMI --mask-lr-mult); None: --mask-learning-rate
    mask_lr_mult: float | None = None
    recluster_every: int = 2  # T
    full_embedding_epoch: int | None = 8  # None: never
    final_k1_epochs: int = 0  # CVPR: last epochs train on all data (K = 1)
    freeze_backbone_after_recluster: bool = False
    cluster_features: str = "penultimate"
    kmeans_iters: int = 100
    # loss
    # The best setting of the peer benchmark on the default data (BENCHMARKS.md,
    # "tfdnc against pytorch-metric-learning"): multi-similarity + Symm + D&C.
    loss: str = "multi_similarity"
    loss_options: dict = field(default_factory=dict)
    symmetrical: bool = True  # Symmetrical Synthesis of hard negatives
    # cross-batch memory around the loss (tfdnc.losses.CrossBatchMemory), one per learner; 0: off
    xbm_size: int = 0
    xbm_start_step: int = 0  # steps before the memory is read and written (XBM authors' warm-up)
    xbm_batch_loss: bool = False  # keep the batch's own loss and add the memory's (XBM authors' code)
    # batches and optimisation
    classes_per_batch: int = 4  # P
    images_per_class: int = 8  # M
    steps_per_epoch: int | None = None  # None: ceil(train images / batch)
    epochs: int = 10
    learning_rate: float = 1e-3
    # the learning rates' curve over the run (tfdnc.training.lr): network, masks and loss alike
    # Cosine decay after a 1-epoch warm-up: chosen by the benchmark suite's average over its four data sets
    # (docs/bench/suite.md: MAP@R 41.2 -> 49.1 at K = 1, 48.5 -> 52.3 for the default recipe, better on
    # every set, final epoch within 0.3 of the best). Both references train at a constant rate
    # (TPAMI experiment/margin_loss_resnet50.py:200-205, StepLR with step_size=inf); the presets keep that.
    lr_schedule: str = "cosine"  # "constant" (both references), "cosine" or "step"
    warmup_epochs: int = 1  # linear warm-up over the first epochs (never the whole run: none when --epochs 1)
    lr_milestones: tuple[float, ...] = (0.5, 0.75)  # "step": fractions of the run after which ...
    lr_gamma: float = 0.1  # ... the rates are multiplied by this
    ema: bool = False  # evaluate, save and export an exponential moving average of the network's weights
    ema_momentum: float = 0.999
    weight_decay: float = 1e-4
    # "coupled": torch Adam's L2 (g + wd * w), as both reference repos train;
    # "decoupled": Keras Adam's weight_decay (w -= lr * wd * w per step)
    weight_decay_mode: str = "coupled"
    mask_weight_decay: float | None = None  # coupled L2 of the masks; None: weight_decay (TPAMI --mask-wd-mult=1)
    loss_learning_rate: float | None = None  # Adam lr of the loss's parameters (TPAMI lr_beta); None: learning_rate
    seed: int = 0
    # evaluation and output
    recall_ks: tuple[int, ...] = (1, 2, 4, 8)
    eval_every: int = 1
    run_dir: str = "runs/default"
    # speed
    jit_compile: bool = False
    mixed_precision: str | None = None
    # scale: "default" (one device), "mirrored" (the GPUs of this host),
    # "multi-worker" (hosts listed in TF_CONFIG); see tfdnc.distributed
    strategy: str = "default"

    def __post_init__(self):
        # Types first: the conversions below and every range check assume them.
        for f in dataclasses.fields(self):
            problem = type_problem(getattr(self, f.name), _setting_types(type(self))[f.name])
            if problem:
                raise SettingError(f.name, problem)
        if self.dataset is None:
            self.dataset = implied_dataset(self.data_dir)
        self.crop_scale = tuple(self.crop_scale)
        self.crop_ratio = tuple(self.crop_ratio)
        self.recall_ks = tuple(int(k) for k in self.recall_ks)
        self.validate()

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.images_per_class

    @property
    def eval_resize(self) -> int:
        return self.resize_size or self.image_size

    def validate(self) -> None:
        """Raises `SettingError` (a `UserInputError`, a ValueError) naming the argument for any inconsistent setting."""
        STRATEGIES, MASK_MODES, LOSSES, GROWTH, CLUSTER_FEATURES = _allowed_values()
        DATASETS, WITH_BOXES = _datasets()

        def bad(arg, why):
            raise SettingError(arg, why)

        # NaN passes every comparison below (nan < 1 and nan >= 0 are both False,
        # so "not 0 < x" style checks miss some); refuse it, and infinities, first.
        for name, value in self._float_settings():
            if not math.isfinite(value):
                bad(name, f"must be a finite number, got {value}")
        if self.dataset not in DATASETS:
            bad("dataset", f"must be one of {', '.join(sorted(DATASETS))}, got {self.dataset!r}")
        if self.use_boxes and self.dataset not in WITH_BOXES:
            bad("use_boxes", f"needs a data set with bounding boxes ({', '.join(WITH_BOXES)}), "
                f"not --dataset {self.dataset}")
        if self.loss not in LOSSES:
            bad("loss", f"must be one of {LOSSES}, got {self.loss!r}")
        self._validate_loss(bad)
        if self.mask_mode not in MASK_MODES:
            bad("mask_mode", f"must be one of {MASK_MODES}, got {self.mask_mode!r}")
        if self.growth not in GROWTH:
            bad("growth", f"must be one of {GROWTH}, got {self.growth!r}")
        if self.cluster_features not in CLUSTER_FEATURES:
            bad("cluster_features", f"must be one of {CLUSTER_FEATURES}, got {self.cluster_features!r}")
        for name in ("image_size", "embedding_dim", "k_final", "recluster_every", "epochs",
                     "classes_per_batch", "images_per_class", "kmeans_iters", "eval_every"):
            if int(getattr(self, name)) < 1:
                bad(name, f"must be >= 1, got {getattr(self, name)}")
        if self.images_per_class < 2:
            bad("images_per_class", f"must be >= 2, got {self.images_per_class} "
                "(the batch sampler draws two or more images of each class)")
        if self.k_final & (self.k_final - 1) and self.growth == "double":
            bad("k_final", f"must be a power of two when growth is 'double', got {self.k_final}")
        if self.k_final > self.embedding_dim:
            bad("k_final", f"({self.k_final}) cannot exceed --embedding-dim ({self.embedding_dim})")
        if self.mask_mode == "fixed" and self.embedding_dim % self.k_final:
            bad("embedding_dim", f"({self.embedding_dim}) must be divisible by --k-final "
                f"({self.k_final}) with fixed masks (contiguous blocks of d/K dims)")
        if self.resize_size is not None and self.resize_size < self.image_size:
            bad("resize_size", f"({self.resize_size}) must be >= --image-size ({self.image_size})")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            bad("crop_scale", f"must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if self.cache_max_side is not None and self.cache_max_side < self.image_size:
            bad("cache_max_side", f"({self.cache_max_side}) must be >= --image-size ({self.image_size})")
        for name in ("xbm_size", "xbm_start_step"):
            if int(getattr(self, name)) < 0:
                bad(name, f"must be >= 0, got {getattr(self, name)}")
        if self.xbm_size and self.symmetrical:
            bad("xbm_size", "cannot be combined with --symmetrical (the memory holds no synthetic negatives); "
                "pass --no-symmetrical")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            bad("steps_per_epoch", f"must be >= 1, got {self.steps_per_epoch}")
        if self.full_embedding_epoch is not None and self.full_embedding_epoch < 0:
            bad("full_embedding_epoch", f"must be >= 0, got {self.full_embedding_epoch}")
        if self.weight_decay_mode not in WEIGHT_DECAY_MODES:
            bad("weight_decay_mode", f"must be one of {WEIGHT_DECAY_MODES}, got {self.weight_decay_mode!r}")
        for name in ("learning_rate", "mask_learning_rate", "loss_learning_rate"):
            value = getattr(self, name)
            if value is not None and not 0 < float(value) < float("inf"):
                bad(name, f"must be a finite number > 0, got {value}")
        for name in ("weight_decay", "mask_weight_decay", "mask_loss_weight"):
            value = getattr(self, name)
            if value is not None and not 0 <= float(value) < float("inf"):
                bad(name, f"must be a finite number >= 0, got {value}")
        if self.batchnorm_momentum is not None and not 0 <= self.batchnorm_momentum < 1:
            bad("batchnorm_momentum", f"must be in [0, 1), got {self.batchnorm_momentum}")
        if self.batchnorm_epsilon is not None and not 0 < self.batchnorm_epsilon < float("inf"):
            bad("batchnorm_epsilon", f"must be a finite number > 0, got {self.batchnorm_epsilon}")
        self._validate_schedule(bad)
        if self.strategy not in STRATEGIES:
            bad("strategy", f"must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            bad("mixed_precision", f"must be mixed_float16 or mixed_bfloat16, got {self.mixed_precision!r}")

    def _validate_loss(self, bad) -> None:
        """The batch shape against what the loss needs, and --loss-options against its constructor."""
        from tfdnc.losses import LOSSES, CrossBatchMemory

        loss_class = LOSSES[self.loss]
        # What the loss declares it needs (tfdnc.losses.base.MetricLoss); the flag that provides it.
        needs = (
            (loss_class.needs_negatives, "classes_per_batch", "negatives (images of another class)"),
            (loss_class.needs_positives, "images_per_class", "positives (a second image of the same class)"),
        )
        for needed, name, what in needs:
            value = getattr(self, name)
            if needed and value < 2:
                bad(name, f"{value} cannot train --loss {self.loss}: it needs {what} in every batch; "
                    f"give --{name.replace('_', '-')} 2 or more")
        accepted = loss_option_names(loss_class)
        if accepted is not None:
            if self.xbm_size:  # the memory's own options (`get_loss` hands them to it)
                accepted = accepted | (loss_option_names(CrossBatchMemory) or set()) - {"loss", "memory_size", "name"}
            unknown = sorted(set(self.loss_options) - accepted)
            if unknown:
                bad("loss_options", f"{json.dumps(self.loss_options)}: --loss {self.loss} takes no option "
                    f"{', '.join(map(repr, unknown))}; it takes {', '.join(sorted(accepted))}")
        hints = _loss_option_types(loss_class)
        for name, value in self.loss_options.items():
            problem = type_problem(value, hints[name]) if name in hints else None
            if problem:
                bad("loss_options", f"{json.dumps(self.loss_options)}: option {name!r} of --loss {self.loss} {problem}")

    def _validate_schedule(self, bad) -> None:
        """The learning-rate schedule's, EMA's and mask multiplier's settings."""
        from tfdnc.training.lr import LR_SCHEDULES

        if self.lr_schedule not in LR_SCHEDULES:
            bad("lr_schedule", f"must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        self.lr_milestones = tuple(float(m) for m in self.lr_milestones)
        if not 0 <= int(self.warmup_epochs) <= int(self.epochs):
            bad("warmup_epochs", f"must be in [0, --epochs ({self.epochs})], got {self.warmup_epochs}")
        if any(not 0 < m < 1 for m in self.lr_milestones):
            bad("lr_milestones", f"must be fractions of the run in (0, 1), got {self.lr_milestones}")
        if not 0 < self.lr_gamma <= 1:
            bad("lr_gamma", f"must be in (0, 1], got {self.lr_gamma}")
        if not 0 < self.ema_momentum < 1:
            bad("ema_momentum", f"must be in (0, 1), got {self.ema_momentum}")
        if self.ema and self.layer_decay != 1.0:
            bad("ema", "cannot be combined with --layer-decay (the layer-decay optimizer keeps no average)")
        if self.mask_lr_mult is not None and not 0 < self.mask_lr_mult < float("inf"):
            bad("mask_lr_mult", f"must be a finite number > 0, got {self.mask_lr_mult}")

    @property
    def mask_rate(self) -> float:
        """The masks' base learning rate: --mask-lr-mult x --learning-rate, or --mask-learning-rate."""
        if self.mask_lr_mult is not None:
            return self.mask_lr_mult * self.learning_rate
        return self.mask_learning_rate

    def __getattr__(self, name: str):
        # Only reached for names that are not attributes: the deprecated ones.
        if name in DEPRECATED_NAMES:
            return getattr(self, DEPRECATED_NAMES[name])
        raise AttributeError(f"'TrainConfig' object has no attribute {name!r}")

    def _float_settings(self):
        """(name, value) of every float setting given, tuple elements included."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            for item in (value if isinstance(value, (tuple, list)) else (value,)):
                if isinstance(item, float):
                    yield f.name, item

    # --- (de)serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        if not isinstance(values, dict):
            raise UserInputError(f"{source}: must hold a JSON object of settings, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = rename_deprecated(values, source)
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserInputError(f"{source}: unknown setting(s) {unknown}; known: {sorted(known)}")
        check_setting_types(values, source, cls)
        return cls(**values)

    def save(self, path: str) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str) -> "TrainConfig":
        return cls.from_dict(read_json(path, what="config file"), source=path)


def implied_dataset(data_dir: str | None) -> str:
    """The data set a run means when none is named: `--data-dir` alone is your images, else `shapes`.

    A folder is a folder of class folders (`folder`); a `.csv` file is a list
    of images (`csv`).
    """
    if data_dir is None:
        return "shapes"
    return "csv" if str(data_dir).lower().endswith(".csv") else "folder"


def _accept_deprecated_names(init):
    """TrainConfig(lr=...) and the other old names still work (a DeprecationWarning each)."""

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **rename_deprecated(kwargs, "TrainConfig"))

    return __init__


TrainConfig.__init__ = _accept_deprecated_names(TrainConfig.__init__)


# Settings --resume may change: how long to train, where (the same directory
# under another path), how, and the learning rate (the way out of a
# non-finite loss). The rest would make the resumed run another run.
RESUME_OVERRIDES = ("epochs", "run_dir", "strategy", "learning_rate")


# --- the command line: one flag per setting (`python train.py`, `tfdnc train`) ----------

_HELP = {
    "dataset": "data set name (see tfdnc.datasets.DATASETS: shapes, mnist, cub, cars, sop, folder, csv, ...); "
               "default: folder when --data-dir is a folder, csv when it is a .csv file, else shapes",
    "data_dir": "folder holding the data set in its distributed layout (alone: a folder of class folders)",
    "backbone": "backbone name (small_cnn, resnet50, ...)",
    "backbone_weights": "None, 'imagenet' or a weights file (e.g. from tfdnc pretrain)",
    "k_final": "final number of learners K",
    "growth": "'double' (TPAMI: K doubles every T epochs) or 'fixed' (CVPR: K from the start)",
    "mask_mode": "'learnable' (TPAMI) or 'fixed' (CVPR contiguous blocks)",
    "recluster_every": "T: re-cluster every T epochs",
    "full_embedding_epoch": "epoch from which the loss uses the full embedding ('none': never)",
    "loss": "learner loss, a name in tfdnc.losses.LOSSES (margin, multi_similarity, triplet, ...)",
    "loss_options": "JSON object of loss arguments, e.g. '{\"alpha\": 0.2}'",
    "symmetrical": "Symmetrical Synthesis of hard negatives",
    "xbm_size": "entries per learner of a cross-batch memory (XBM) around the loss; 0 = off; needs a pair-based "
                "loss (margin, triplet, contrastive, multi_similarity) and --no-symmetrical",
    "xbm_start_step": "training steps before the cross-batch memory is used (the XBM authors' warm-up)",
    "xbm_batch_loss": "with a cross-batch memory, keep the batch's own loss and add the memory's "
                      "(the XBM authors' code; off: the memory alone, as pytorch-metric-learning)",
    "classes_per_batch": "P classes per batch",
    "images_per_class": "M images per class",
    "steps_per_epoch": "batches per epoch (default: ceil(train images / batch size))",
    "weight_decay_mode": "'coupled' (torch Adam L2, the references) or 'decoupled' (Keras Adam weight_decay)",
    "mask_lr_mult": "masks' learning rate as a multiple of --learning-rate (TPAMI --mask-lr-mult=100); "
                    "none: --mask-learning-rate",
    "lr_schedule": "learning-rate curve of network, masks and loss: 'constant' (the references), 'cosine' "
                   "(to 0 at the last step) or 'step' (x --lr-gamma at each --lr-milestones fraction)",
    "warmup_epochs": "epochs of linear learning-rate warm-up",
    "lr_milestones": "with --lr-schedule step: fractions of the run after which the rates drop",
    "lr_gamma": "with --lr-schedule step: the factor of each drop",
    "ema": "evaluate, save and export an exponential moving average of the network's weights (Keras use_ema)",
    "ema_momentum": "momentum of --ema's average (per step)",
    "batchnorm_momentum": "backbone BatchNorm momentum, Keras convention (torch's 0.1 = 0.9 here); none: default",
    "backbone_pooling": "hub: backbones: 'class' (class token) or 'mean' (mean of patch tokens); none: class token",
    "freeze_backbone_layers": "hub: backbones: the patch embedding and the first N transformer blocks do not train",
    "layer_decay": "hub: backbones: layer-wise lr decay, block i of L trains at lr * decay**(L + 1 - i); 1: off",
    "run_dir": "output folder of the run",
    "cache_dir": "decode the training images once into this folder and train from it",
    "cache_max_side": "shrink cached images to this shorter side (faster; None keeps full size)",
    "image_size": "side in pixels of the square crop the network sees (training and evaluation)",
    "resize_size": "evaluation: shorter side in pixels before the centre crop; none: --image-size",
    "crop_scale": "training crops: range of the area fraction of a random resized crop (the papers: 0.08 1)",
    "crop_ratio": "training crops: range of the aspect ratio of a random resized crop",
    "flip": "random horizontal flips of the training images (on for photos; off for digits)",
    "use_boxes": "crop CUB / CARS images to their bounding boxes",
    "pixel_mode": "pixel normalisation before the backbone: caffe, torch, tf, scale or none; "
                  "default: what the backbone's pretrained weights expect",
    "freeze_batchnorm": "keep the backbone's BatchNorm statistics fixed (gamma and beta still train), as the papers",
    "batchnorm_epsilon": "backbone BatchNorm epsilon; none: the backbone's default (small_cnn: 1e-5, torch's)",
    "embedding_dim": "size of the full embedding, split among the K learners by the masks",
    "mask_loss_weight": "lambda: weight of the masks' orthogonality loss (learnable masks only)",
    "mask_learning_rate": "Adam learning rate of the masks, for --mask-mode learnable only "
                          "(the papers: 100x the network's)",
    "final_k1_epochs": "CVPR: the last N epochs train one learner on all the data (K = 1)",
    "freeze_backbone_after_recluster": "train only the embedding head, not the backbone, after the first "
                                       "re-clustering",
    "cluster_features": "what k-means clusters the training images by: penultimate (backbone features) or "
                        "embedding",
    "kmeans_iters": "most Lloyd iterations of each k-means re-clustering",
    "epochs": "training epochs in all",
    "learning_rate": "Adam learning rate of the network (backbone and head)",
    "weight_decay": "L2 weight decay of the network (see --weight-decay-mode)",
    "mask_weight_decay": "coupled L2 weight decay of the masks (default: none = the network's --weight-decay)",
    "loss_learning_rate": "Adam learning rate of the loss's own parameters, e.g. the margin loss's beta "
                          "(default: none = the network's --learning-rate)",
    "seed": "random seed of weights, sampling, augmentation and k-means",
    "recall_ks": "the K of the Recall@K reported at each evaluation",
    "eval_every": "evaluate on the test split every N epochs (and after the last)",
    "jit_compile": "compile the training step with XLA",
    "mixed_precision": "Keras mixed precision policy: mixed_float16 or mixed_bfloat16; none: float32",
    "strategy": "tf.distribute strategy: default (one device), mirrored (all local GPUs) or multi-worker "
                "(TF_CONFIG)",
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with an error as one line naming the argument: `PROG: error: ...`, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (the error names the argument)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="train.py",
        description="Train a Divide & Conquer embedding, evaluate it and export a SavedModel.",
    )
    parser.add_argument("--config", help="JSON file of TrainConfig settings (flags override it)")
    parser.add_argument("--preset", help="paper preset, e.g. tpami-cub (see tfdnc.presets)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its newest complete backup generation; "
                             f"only {', '.join('--' + k.replace('_', '-') for k in RESUME_OVERRIDES)} may change "
                             "(recorded in config.json and resumes.json)")
    parser.add_argument("--export", action=argparse.BooleanOptionalAction, default=True,
                        help="export a SavedModel into RUN_DIR/export at the end")
    parser.add_argument("--strict-images", action="store_true",
                        help="fail on an unreadable image instead of skipping it")
    parser.add_argument("--backup-every-steps", type=int, default=None,
                        help="ignored: backups are whole generations at each epoch's end (see --resume)")
    parser.add_argument("--verbose", type=int, default=1, help="0 silent, 1 progress bars, 2 one line per epoch")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error in the settings or data too (not only one line)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "preset":
            continue  # the --preset flag above sets it
        flag = "--" + f.name.replace("_", "-")
        flags = [flag] + ["--" + old.replace("_", "-") for old, new in DEPRECATED_NAMES.items() if new == f.name]
        kind = hints[f.name]
        text = _HELP.get(f.name, f.name.replace("_", " "))
        # SUPPRESS: a flag not given leaves no attribute, so "none" can set None.
        unset = argparse.SUPPRESS
        if f.name != "dataset" and "(default:" not in text:  # dataset's depends on --data-dir (said in its help)
            text += f" (default: {f.default if f.default is not dataclasses.MISSING else f.default_factory()})"
        if len(flags) > 1:
            text += f"; {', '.join(flags[1:])}: deprecated name"
        if kind is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=unset, help=text)
        elif f.name == "loss_options":
            parser.add_argument(*flags, type=_json_object, default=unset, help=text)
        elif typing.get_origin(kind) is tuple:
            elem = float if typing.get_args(kind)[0] is float else int
            parser.add_argument(*flags, type=elem, nargs="+", default=unset, help=text)
        else:
            parser.add_argument(*flags, type=_scalar_parser(kind), default=unset, help=text)
    return parser


def _json_object(text: str) -> dict:
    """argparse type: a JSON object (the error names the argument)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"alpha\": 0.2}}', got {text!r}")
    return value


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
