"""The training settings: five sections (data, model, loss, schedule, runtime), one flat `TrainConfig`.

Each section is a small dataclass holding the settings of the part that
uses it, with its own checks: `DataConfig` (the data set, augmentation and
batches: `tfdnc.train.TrainingData.from_config`), `ModelConfig` (backbone,
embedding, masks and their optimisers: `tfdnc.train.build_model`),
`LossConfig` (`tfdnc.losses.loss_from_config`), `ScheduleConfig` (the Divide
& Conquer schedule and the learning-rate curve) and `RuntimeConfig` (seed,
output, speed, scale). `TrainConfig` is all five at once: one flag per
setting, one flat `config.json`; `config.data_config` ... give the sections,
and `TrainConfig.from_sections(...)` builds one from them. A `config.json`
may also be written in sections (`{"data": {...}, "model": {...}}`).

Nothing here imports TensorFlow at import time (`tfdnc train --help` reads
the settings); the allowed values come from the modules that use them, on use.
"""

from __future__ import annotations

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

WEIGHT_DECAY_MODES = ("coupled", "decoupled")  # how train.build_model applies weight decay
MIXED_PRECISION = (None, "mixed_float16", "mixed_bfloat16")

# Settings that were removed, with what a config file holding one gets. Renamed settings are an error
# (ignoring them would silently train another run); settings that never had an effect are ignored.
REMOVED_SETTINGS = {
    "lr": "renamed 'learning_rate'",
    "mask_lr": "renamed 'mask_learning_rate'",
    "loss_lr": "renamed 'loss_learning_rate'",
    "symm": "renamed 'symmetrical'",
}
IGNORED_SETTINGS = {
    # Every config.json tfdnc 0.1.0 wrote holds it; the Recall@K reported always came from the protocol.
    "recall_ks": "the Recall@K cut-offs come from the data set's protocol (tfdnc.evaluation.protocols)",
}


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

    Examples:
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


def _bad(setting: str, why: str):
    raise SettingError(setting, why)


def _datasets() -> tuple:
    """The data set names and those with bounding boxes, from `tfdnc.datasets` (loaded on use, as above)."""
    from tfdnc.datasets import DATASETS, WITH_BOXES

    return tuple(DATASETS), WITH_BOXES


@functools.cache
def _setting_types(cls: type | None = None) -> dict[str, Any]:
    """The type hint of every setting of `cls` (TrainConfig, a section, or a subclass with more settings)."""
    return typing.get_type_hints(cls or TrainConfig)


def check_setting_types(values: dict[str, Any], source: str, cls: type | None = None) -> None:
    """Raises `SettingError` naming `source` and the setting for a value of the wrong type.

    Driven by `TrainConfig`'s type hints, so a new setting is checked
    without an edit here. Unknown names are left to `TrainConfig.from_dict`.

    Examples:
        >>> check_setting_types({"embedding_dim": "64"}, "cfg.json")
        Traceback (most recent call last):
        tfdnc.config.settings.SettingError: cfg.json: setting 'embedding_dim' must be an integer, got "64" (a string)
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


class _Section:
    """What every section does: check its types, then its values, on construction."""

    def __post_init__(self):
        self._check_types()
        self.check()

    def _check_types(self) -> None:
        hints = _setting_types(type(self))
        for f in dataclasses.fields(self):
            problem = type_problem(getattr(self, f.name), hints[f.name])
            if problem:
                raise SettingError(f.name, problem)

    def check(self) -> None:
        """Raises `SettingError` naming the setting for a value out of range."""

    @classmethod
    def take(cls, values: Any):
        """This section's settings out of `values` (a `TrainConfig` or any object with them as attributes)."""
        return cls(**{f.name: getattr(values, f.name) for f in dataclasses.fields(cls)})


@dataclass
class DataConfig(_Section):
    """The data set, its augmentation and the batches (P classes x M images)."""

    # None: "folder" when data_dir is given (a ".csv" file: "csv"), else the generated "shapes",
    # 4 families: where D&C shows its gain (BENCHMARKS.md)
    dataset: str | None = None
    data_dir: str | None = None
    image_size: int = 32  # side of the (square) crop the network sees
    resize_size: int | None = None  # eval: resize shorter side, then centre crop; None: image_size
    # RandomResizedCrop area and aspect ranges; (1, 1) and (1, 1): the whole image, no crop. The benchmark
    # suite chose no crop (MAP@R 52.4 +- 1.0 against 50.7 +- 1.3 with (0.5, 1) / (3/4, 4/3), 6 seeds;
    # docs/bench/suite.md); the papers' presets keep their crops (0.08, 1).
    crop_scale: tuple[float, float] = (1.0, 1.0)
    crop_ratio: tuple[float, float] = (1.0, 1.0)
    flip: bool = False  # horizontal flips (on for natural images; off for digits)
    use_boxes: bool = False  # crop to bounding boxes where the data set has them
    cache_dir: str | None = None  # decode training images once into this folder (tfdnc.data.cache)
    cache_max_side: int | None = None  # shrink cached images to this shorter side (None: full size)
    classes_per_batch: int = 4  # P
    images_per_class: int = 8  # M
    steps_per_epoch: int | None = None  # None: ceil(train images / batch)

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.images_per_class

    @property
    def eval_resize(self) -> int:
        return self.resize_size or self.image_size

    def check(self) -> None:
        DataConfig.check_data(self)

    def check_data(self) -> None:
        """The data set, crops and batch shape."""
        if self.dataset is None:
            self.dataset = implied_dataset(self.data_dir)
        self.crop_scale = tuple(self.crop_scale)
        self.crop_ratio = tuple(self.crop_ratio)
        datasets, with_boxes = _datasets()
        if self.dataset not in datasets:
            _bad("dataset", f"must be one of {', '.join(sorted(datasets))}, got {self.dataset!r}")
        if self.use_boxes and self.dataset not in with_boxes:
            _bad("use_boxes", f"needs a data set with bounding boxes ({', '.join(with_boxes)}), "
                 f"not --dataset {self.dataset}")
        for name in ("image_size", "classes_per_batch"):
            if int(getattr(self, name)) < 1:
                _bad(name, f"must be >= 1, got {getattr(self, name)}")
        if self.images_per_class < 2:
            _bad("images_per_class", f"must be >= 2, got {self.images_per_class} "
                 "(the batch sampler draws two or more images of each class)")
        if self.resize_size is not None and self.resize_size < self.image_size:
            _bad("resize_size", f"({self.resize_size}) must be >= --image-size ({self.image_size})")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            _bad("crop_scale", f"must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if self.cache_max_side is not None and self.cache_max_side < self.image_size:
            _bad("cache_max_side", f"({self.cache_max_side}) must be >= --image-size ({self.image_size})")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            _bad("steps_per_epoch", f"must be >= 1, got {self.steps_per_epoch}")


@dataclass
class ModelConfig(_Section):
    """The network (backbone, embedding), the K subspace masks, and the optimisers of all three."""

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
    k_final: int = 4  # one learner per family of the default data
    mask_mode: str = "learnable"
    mask_loss_weight: float = 0.01
    mask_learning_rate: float = 1e-3
    # masks' rate as a multiple of --learning-rate (TPAMI --mask-lr-mult); None: --mask-learning-rate
    mask_lr_mult: float | None = None
    learning_rate: float = 1e-3
    ema: bool = False  # evaluate, save and export an exponential moving average of the network's weights
    ema_momentum: float = 0.999
    weight_decay: float = 1e-4
    # "coupled": torch Adam's L2 (g + wd * w), as both reference repos train;
    # "decoupled": Keras Adam's weight_decay (w -= lr * wd * w per step)
    weight_decay_mode: str = "coupled"
    mask_weight_decay: float | None = None  # coupled L2 of the masks; None: weight_decay (TPAMI --mask-wd-mult=1)
    loss_learning_rate: float | None = None  # Adam lr of the loss's parameters (TPAMI lr_beta); None: learning_rate

    @property
    def mask_rate(self) -> float:
        """The masks' base learning rate: --mask-lr-mult x --learning-rate, or --mask-learning-rate."""
        if self.mask_lr_mult is not None:
            return self.mask_lr_mult * self.learning_rate
        return self.mask_learning_rate

    def check(self) -> None:
        ModelConfig.check_model(self)
        ModelConfig.check_optimisers(self)

    def check_model(self) -> None:
        """Embedding size, K and the masks, BatchNorm."""
        mask_modes = _allowed_values()[1]
        if self.mask_mode not in mask_modes:
            _bad("mask_mode", f"must be one of {mask_modes}, got {self.mask_mode!r}")
        for name in ("embedding_dim", "k_final"):
            if int(getattr(self, name)) < 1:
                _bad(name, f"must be >= 1, got {getattr(self, name)}")
        if self.k_final > self.embedding_dim:
            _bad("k_final", f"({self.k_final}) cannot exceed --embedding-dim ({self.embedding_dim})")
        if self.mask_mode == "fixed" and self.embedding_dim % self.k_final:
            _bad("embedding_dim", f"({self.embedding_dim}) must be divisible by --k-final "
                 f"({self.k_final}) with fixed masks (contiguous blocks of d/K dims)")
        if self.batchnorm_momentum is not None and not 0 <= self.batchnorm_momentum < 1:
            _bad("batchnorm_momentum", f"must be in [0, 1), got {self.batchnorm_momentum}")
        if self.batchnorm_epsilon is not None and not 0 < self.batchnorm_epsilon < float("inf"):
            _bad("batchnorm_epsilon", f"must be a finite number > 0, got {self.batchnorm_epsilon}")

    def check_optimisers(self) -> None:
        """Learning rates, weight decays, EMA."""
        if self.weight_decay_mode not in WEIGHT_DECAY_MODES:
            _bad("weight_decay_mode", f"must be one of {WEIGHT_DECAY_MODES}, got {self.weight_decay_mode!r}")
        for name in ("learning_rate", "mask_learning_rate", "loss_learning_rate"):
            value = getattr(self, name)
            if value is not None and not 0 < float(value) < float("inf"):
                _bad(name, f"must be a finite number > 0, got {value}")
        for name in ("weight_decay", "mask_weight_decay", "mask_loss_weight"):
            value = getattr(self, name)
            if value is not None and not 0 <= float(value) < float("inf"):
                _bad(name, f"must be a finite number >= 0, got {value}")
        if not 0 < self.ema_momentum < 1:
            _bad("ema_momentum", f"must be in (0, 1), got {self.ema_momentum}")
        if self.ema and self.layer_decay != 1.0:
            _bad("ema", "cannot be combined with --layer-decay (the layer-decay optimizer keeps no average)")
        if self.mask_lr_mult is not None and not 0 < self.mask_lr_mult < float("inf"):
            _bad("mask_lr_mult", f"must be a finite number > 0, got {self.mask_lr_mult}")


@dataclass
class LossConfig(_Section):
    """The metric loss: its name and options, Symmetrical Synthesis, a cross-batch memory around it.

    `tfdnc.losses.loss_from_config(section, **facts)` builds it; the loss
    declares which facts of the run (number of classes, embedding size,
    learners) it needs.
    """

    # The best setting of the peer benchmark on the default data (BENCHMARKS.md,
    # "tfdnc against pytorch-metric-learning"): multi-similarity + Symm + D&C.
    loss: str = "multi_similarity"
    loss_options: dict = field(default_factory=dict)
    symmetrical: bool = True  # Symmetrical Synthesis of hard negatives
    # cross-batch memory around the loss (tfdnc.losses.CrossBatchMemory), one per learner; 0: off
    xbm_size: int = 0
    xbm_start_step: int = 0  # steps before the memory is read and written (XBM authors' warm-up)
    xbm_batch_loss: bool = False  # keep the batch's own loss and add the memory's (XBM authors' code)

    def check(self) -> None:
        LossConfig.check_loss(self)

    def check_loss(self) -> None:
        """The loss name, --loss-options against its constructor, the memory."""
        from tfdnc.losses import LOSSES, CrossBatchMemory

        if self.loss not in LOSSES:
            _bad("loss", f"must be one of {tuple(LOSSES)}, got {self.loss!r}")
        loss_class = LOSSES[self.loss]
        accepted = loss_option_names(loss_class)
        if accepted is not None:
            if self.xbm_size:  # the memory's own options (`get_loss` hands them to it)
                accepted = accepted | (loss_option_names(CrossBatchMemory) or set()) - {"loss", "memory_size", "name"}
            unknown = sorted(set(self.loss_options) - accepted)
            if unknown:
                _bad("loss_options", f"{json.dumps(self.loss_options)}: --loss {self.loss} takes no option "
                     f"{', '.join(map(repr, unknown))}; it takes {', '.join(sorted(accepted))}")
        hints = _loss_option_types(loss_class)
        for name, value in self.loss_options.items():
            problem = type_problem(value, hints[name]) if name in hints else None
            if problem:
                _bad("loss_options", f"{json.dumps(self.loss_options)}: option {name!r} of --loss {self.loss} {problem}")
        for name in ("xbm_size", "xbm_start_step"):
            if int(getattr(self, name)) < 0:
                _bad(name, f"must be >= 0, got {getattr(self, name)}")
        if self.xbm_size and self.symmetrical:
            _bad("xbm_size", "cannot be combined with --symmetrical (the memory holds no synthetic negatives); "
                 "pass --no-symmetrical")

    def check_batches(self, data: DataConfig) -> None:
        """The batch shape against what the loss declares it needs (its `LossNeeds`)."""
        from tfdnc.losses import LOSSES

        needs = LOSSES[self.loss].NEEDS
        for needed, name, what in (
            (needs.negatives, "classes_per_batch", "negatives (images of another class)"),
            (needs.positives, "images_per_class", "positives (a second image of the same class)"),
        ):
            value = getattr(data, name)
            if needed and value < 2:
                _bad(name, f"{value} cannot train --loss {self.loss}: it needs {what} in every batch; "
                     f"give --{name.replace('_', '-')} 2 or more")


@dataclass
class ScheduleConfig(_Section):
    """How long and how the run trains: the Divide & Conquer schedule and the learning-rate curve."""

    epochs: int = 10
    growth: str = "double"  # "double" (TPAMI) or "fixed" (CVPR: K = k_final from the start)
    recluster_every: int = 2  # T
    full_embedding_epoch: int | None = 8  # None: never
    final_k1_epochs: int = 0  # CVPR: last epochs train on all data (K = 1)
    freeze_backbone_after_recluster: bool = False
    cluster_features: str = "penultimate"
    kmeans_iters: int = 100
    # the learning rates' curve over the run (tfdnc.training.lr): network, masks and loss alike
    # Cosine decay after a 1-epoch warm-up: chosen by the benchmark suite's average over its four data sets
    # (docs/bench/suite.md: MAP@R 41.2 -> 49.1 at K = 1, 48.5 -> 52.3 for the default recipe, better on
    # every set, final epoch within 0.3 of the best). Both references train at a constant rate
    # (TPAMI experiment/margin_loss_resnet50.py:200-205, StepLR with step_size=inf); the presets keep that.
    lr_schedule: str = "cosine"  # "constant" (both references), "cosine" or "step"
    warmup_epochs: int = 1  # linear warm-up over the first epochs (never the whole run: none when --epochs 1)
    lr_milestones: tuple[float, ...] = (0.5, 0.75)  # "step": fractions of the run after which ...
    lr_gamma: float = 0.1  # ... the rates are multiplied by this

    def check(self) -> None:
        ScheduleConfig.check_schedule(self)
        ScheduleConfig.check_learning_rate_curve(self)

    def check_schedule(self) -> None:
        """Epochs, growth, re-clustering."""
        _, _, _, growth, cluster_features = _allowed_values()
        if self.growth not in growth:
            _bad("growth", f"must be one of {growth}, got {self.growth!r}")
        if self.cluster_features not in cluster_features:
            _bad("cluster_features", f"must be one of {cluster_features}, got {self.cluster_features!r}")
        for name in ("recluster_every", "epochs", "kmeans_iters"):
            if int(getattr(self, name)) < 1:
                _bad(name, f"must be >= 1, got {getattr(self, name)}")
        if self.full_embedding_epoch is not None and self.full_embedding_epoch < 0:
            _bad("full_embedding_epoch", f"must be >= 0, got {self.full_embedding_epoch}")

    def check_learning_rate_curve(self) -> None:
        """The learning-rate schedule's settings."""
        from tfdnc.training.lr import LR_SCHEDULES

        if self.lr_schedule not in LR_SCHEDULES:
            _bad("lr_schedule", f"must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        self.lr_milestones = tuple(float(m) for m in self.lr_milestones)
        if not 0 <= int(self.warmup_epochs) <= int(self.epochs):
            _bad("warmup_epochs", f"must be in [0, --epochs ({self.epochs})], got {self.warmup_epochs}")
        if any(not 0 < m < 1 for m in self.lr_milestones):
            _bad("lr_milestones", f"must be fractions of the run in (0, 1), got {self.lr_milestones}")
        if not 0 < self.lr_gamma <= 1:
            _bad("lr_gamma", f"must be in (0, 1], got {self.lr_gamma}")


@dataclass
class RuntimeConfig(_Section):
    """Where and how the run runs: seed, output, evaluation cadence, speed, scale."""

    preset: str | None = None  # the paper preset the run started from (informational)
    seed: int = 0
    eval_every: int = 1
    run_dir: str = "runs/default"
    jit_compile: bool = False
    mixed_precision: str | None = None
    # scale: "default" (one device), "mirrored" (the GPUs of this host),
    # "multi-worker" (hosts listed in TF_CONFIG); see tfdnc.distributed
    strategy: str = "default"

    def check(self) -> None:
        RuntimeConfig.check_runtime(self)

    def check_runtime(self) -> None:
        """Evaluation cadence, precision, strategy."""
        if int(self.eval_every) < 1:
            _bad("eval_every", f"must be >= 1, got {self.eval_every}")
        strategies = _allowed_values()[0]
        if self.strategy not in strategies:
            _bad("strategy", f"must be one of {strategies}, got {self.strategy!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            _bad("mixed_precision", f"must be mixed_float16 or mixed_bfloat16, got {self.mixed_precision!r}")


SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "schedule": ScheduleConfig,
            "runtime": RuntimeConfig}


@dataclass
class TrainConfig(RuntimeConfig, ScheduleConfig, LossConfig, ModelConfig, DataConfig):
    """Everything a Divide & Conquer run needs: the five sections in one; defaults: the quick-start run.

    Defaults follow the TPAMI reference (learnable masks, K grown by
    doubling every T epochs) scaled down to the generated `shapes` data set,
    with the loss and Symm setting the peer benchmark found best; the
    paper-sized settings are the presets in `tfdnc.presets`.

    Every setting is a field (a flag of `train.py`, a key of the flat
    `config.json`); each belongs to one section (`SECTIONS`), which the part
    that uses it receives: `config.data_config`, `config.model_config`,
    `config.loss_config`, `config.schedule_config`, `config.runtime_config`.

    Examples:
        >>> config = TrainConfig(epochs=4, loss="margin")
        >>> config.loss_config
        LossConfig(loss='margin', loss_options={}, symmetrical=True, xbm_size=0, xbm_start_step=0, xbm_batch_loss=False)
        >>> TrainConfig.from_sections(data=DataConfig(dataset="mnist"), schedule=ScheduleConfig(epochs=2)).epochs
        2
    """

    def __post_init__(self):
        # Types first: the conversions in the checks and every range check assume them.
        self._check_types()
        self.validate()

    def validate(self) -> None:
        """Raises `SettingError` (a `UserInputError`, a ValueError) naming the argument for any inconsistent setting.

        Each section's own checks, then those across sections.
        """
        # NaN passes every comparison (nan < 1 and nan >= 0 are both False,
        # so "not 0 < x" style checks miss some); refuse it, and infinities, first.
        for name, value in self._float_settings():
            if not math.isfinite(value):
                _bad(name, f"must be a finite number, got {value}")
        DataConfig.check_data(self)
        LossConfig.check_loss(self)
        LossConfig.check_batches(self, self)
        ModelConfig.check_model(self)
        ScheduleConfig.check_schedule(self)
        if self.k_final & (self.k_final - 1) and self.growth == "double":
            _bad("k_final", f"must be a power of two when growth is 'double', got {self.k_final}")
        ModelConfig.check_optimisers(self)
        ScheduleConfig.check_learning_rate_curve(self)
        RuntimeConfig.check_runtime(self)

    check = validate

    # --- the sections ------------------------------------------------------
    @property
    def data_config(self) -> DataConfig:
        return DataConfig.take(self)

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.take(self)

    @property
    def loss_config(self) -> LossConfig:
        return LossConfig.take(self)

    @property
    def schedule_config(self) -> ScheduleConfig:
        return ScheduleConfig.take(self)

    @property
    def runtime_config(self) -> RuntimeConfig:
        return RuntimeConfig.take(self)

    @classmethod
    def from_sections(cls, **sections) -> "TrainConfig":
        """A config from sections by name (`data=DataConfig(...)`, ...); sections not given keep their defaults."""
        unknown = sorted(set(sections) - set(SECTIONS))
        if unknown:
            raise TypeError(f"TrainConfig.from_sections: no section {unknown}; the sections are {list(SECTIONS)}")
        values: dict[str, Any] = {}
        for name, section in sections.items():
            if not isinstance(section, SECTIONS[name]):
                raise TypeError(f"TrainConfig.from_sections: `{name}` must be a {SECTIONS[name].__name__}, "
                                f"got {type(section).__name__}")
            values.update(dataclasses.asdict(section))
        return cls(**values)

    def _float_settings(self):
        """(name, value) of every float setting given, tuple elements included."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            for item in (value if isinstance(value, (tuple, list)) else (value,)):
                if isinstance(item, float):
                    yield f.name, item

    # --- (de)serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The flat settings (what config.json holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        """A config from flat settings or settings in sections (`{"data": {...}, ...}`), `source` named in errors."""
        if not isinstance(values, dict):
            raise UserInputError(f"{source}: must hold a JSON object of settings, got {type(values).__name__}")
        values = without_removed_settings(flatten_sections(values, source), source)
        known = {f.name for f in dataclasses.fields(cls)}
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


def flatten_sections(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Settings given in sections (`{"data": {"image_size": 64}}`) as flat settings; flat ones pass."""
    flat = {k: v for k, v in values.items() if not (k in SECTIONS and isinstance(v, dict))}
    for name, settings in values.items():
        if name not in SECTIONS or not isinstance(settings, dict):
            continue
        own = {f.name for f in dataclasses.fields(SECTIONS[name])}
        stray = sorted(set(settings) - own)
        if stray:
            raise UserInputError(f"{source}: section {name!r} has no setting(s) {stray}; it has {sorted(own)}")
        twice = sorted(set(settings) & set(flat))
        if twice:
            raise UserInputError(f"{source}: setting(s) {twice} given both in section {name!r} and at the top")
        flat.update(settings)
    return flat


def without_removed_settings(values: dict[str, Any], source: str) -> dict[str, Any]:
    """`values` less the settings that never had an effect (a warning each); a renamed one is an error naming it."""
    for name, what in REMOVED_SETTINGS.items():
        if name in values:
            raise SettingError(name, f"was removed ({what}): use the new name", source)
    values = dict(values)
    for name, why in IGNORED_SETTINGS.items():
        if name in values:
            warnings.warn(f"{source}: setting {name!r} was removed and is ignored: {why}", UserWarning, stacklevel=3)
            values.pop(name)
    return values


def implied_dataset(data_dir: str | None) -> str:
    """The data set a run means when none is named: `--data-dir` alone is your images, else `shapes`.

    A folder is a folder of class folders (`folder`); a `.csv` file is a list
    of images (`csv`).
    """
    if data_dir is None:
        return "shapes"
    return "csv" if str(data_dir).lower().endswith(".csv") else "folder"


# Settings --resume may change: how long to train, where (the same directory
# under another path), how, and the learning rate (the way out of a
# non-finite loss). The rest would make the resumed run another run.
RESUME_OVERRIDES = ("epochs", "run_dir", "strategy", "learning_rate")
