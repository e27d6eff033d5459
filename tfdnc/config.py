"""The training configuration: one dataclass, readable from JSON and the CLI."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

# The allowed values live with the code that uses them; this module only checks them.
from tfdnc.distributed.strategy import STRATEGIES
from tfdnc.layers.masks import MASK_MODES
from tfdnc.losses import LOSSES as _LOSS_CLASSES
from tfdnc.training.phases import GROWTH
from tfdnc.training.recluster import CLUSTER_FEATURES
from tfdnc.utils import read_json, write_json

LOSSES = tuple(_LOSS_CLASSES)
WEIGHT_DECAY_MODES = ("coupled", "decoupled")  # how train.build_model applies weight decay
MIXED_PRECISION = (None, "mixed_float16", "mixed_bfloat16")


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
    dataset: str = "shapes"  # generated, 4 families: where D&C shows its gain (BENCHMARKS.md)
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
    embedding_dim: int = 64
    # divide & conquer
    k_final: int = 4  # one learner per family of the default data
    growth: str = "double"  # "double" (TPAMI) or "fixed" (CVPR: K = k_final from the start)
    mask_mode: str = "learnable"
    mask_loss_weight: float = 0.01
    mask_lr: float = 1e-3
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
    symm: bool = True
    # batches and optimisation
    classes_per_batch: int = 4  # P
    images_per_class: int = 8  # M
    steps_per_epoch: int | None = None  # None: ceil(train images / batch)
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    # "coupled": torch Adam's L2 (g + wd * w), as both reference repos train;
    # "decoupled": Keras Adam's weight_decay (w -= lr * wd * w per step)
    weight_decay_mode: str = "coupled"
    mask_weight_decay: float | None = None  # coupled L2 of the masks; None: weight_decay (TPAMI --mask-wd-mult=1)
    loss_lr: float | None = None  # Adam lr of the loss's parameters (learnable beta; TPAMI lr_beta); None: lr
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
        """Raises ValueError naming the argument for any inconsistent setting."""
        def bad(arg, why):
            raise ValueError(f"TrainConfig: --{arg.replace('_', '-')} {why}")

        # NaN passes every comparison below (nan < 1 and nan >= 0 are both False,
        # so "not 0 < x" style checks miss some); refuse it, and infinities, first.
        for name, value in self._float_settings():
            if not math.isfinite(value):
                bad(name, f"must be a finite number, got {value}")
        if self.loss not in LOSSES:
            bad("loss", f"must be one of {LOSSES}, got {self.loss!r}")
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
            bad("images_per_class", "must be >= 2: every class in a batch needs a positive pair")
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
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            bad("steps_per_epoch", f"must be >= 1, got {self.steps_per_epoch}")
        if self.full_embedding_epoch is not None and self.full_embedding_epoch < 0:
            bad("full_embedding_epoch", f"must be >= 0, got {self.full_embedding_epoch}")
        if self.weight_decay_mode not in WEIGHT_DECAY_MODES:
            bad("weight_decay_mode", f"must be one of {WEIGHT_DECAY_MODES}, got {self.weight_decay_mode!r}")
        for name in ("lr", "mask_lr", "loss_lr"):
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
        if self.strategy not in STRATEGIES:
            bad("strategy", f"must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            bad("mixed_precision", f"must be mixed_float16 or mixed_bfloat16, got {self.mixed_precision!r}")

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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def save(self, path: str) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str) -> "TrainConfig":
        return cls.from_dict(read_json(path, what="config file"), source=path)
