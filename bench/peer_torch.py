"""The peer side of bench/bench_peer.py: the same run in PyTorch + pytorch-metric-learning.

A torch replica of tfdnc's `small_cnn` backbone and embedding head, trained
with pytorch-metric-learning's losses, miners and `MPerClassSampler`, and
evaluated with tfdnc's own protocol code (`tfdnc.evaluation.protocols.run_protocol`, the
NumPy metrics of `tfdnc.evaluation.metrics`), so both sides share one metric
definition. Images reach the network through tfdnc's own TensorFlow
transforms (`tfdnc.data.transforms`), so both sides see the same pixels.

Needs torch and pytorch-metric-learning, which tfdnc itself never depends on:
run it from the bench-only virtualenv (see docs/bench/peer.md).

Every setting comes from the same plain dict of `TrainConfig` fields that the
tfdnc side is built from (`train_peer(settings, ...)`); the loss's
hyper-parameters are read from the tfdnc loss object those settings build
(`get_loss(name, **loss_options).get_config()`), and the BatchNorm momentum /
epsilon from the tfdnc backbone they build, so the two sides cannot drift
apart when tfdnc's defaults change.
"""

from __future__ import annotations

import inspect
import math
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances, losses, miners, regularizers, samplers
from pytorch_metric_learning.utils import common_functions as pml_common
from torch import nn

# --- the network -------------------------------------------------------------


class SmallCNN(nn.Module):
    """tfdnc.backbones `small_cnn`: pixels / 255, 4 x (Conv3x3 no bias, BN, ReLU), GAP.

    Width `width` doubling per block; a 2 x 2 max pool after the first three
    blocks with Keras's padding="same" (ceil_mode: 7 -> 4 as Keras does).
    Input: float NHWC images in [0, 255] (tfdnc's layout); output (B, 8 * width).
    `bn_momentum` is in Keras's convention (share of the old statistics).
    `freeze_batchnorm`: tfdnc's `freeze_batchnorm=True` (tfdnc.backbones.BatchNormalization with
    `freeze_statistics`): every BatchNorm normalises with its moving statistics and never updates them,
    also in training, while gamma and beta still train; here the BatchNorm modules stay in eval mode
    whatever `train()` says (their parameters keep requires_grad).
    """

    def __init__(self, channels: int, width: int = 32, bn_momentum: float = 0.9, bn_epsilon: float = 1e-5,
                 freeze_batchnorm: bool = False):
        super().__init__()
        self.freeze_batchnorm = bool(freeze_batchnorm)
        layers: list[nn.Module] = []
        in_ch = channels
        for block in range(4):
            out_ch = width * 2**block
            layers += [
                nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch, eps=bn_epsilon, momentum=1.0 - bn_momentum),
                nn.ReLU(inplace=True),
            ]
            if block < 3:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            in_ch = out_ch
        self.trunk = nn.Sequential(*layers)
        self.feature_dim = in_ch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2) / 255.0  # PixelNormalization("scale"), then NCHW
        return self.trunk(x).mean(dim=(2, 3))

    def train(self, mode: bool = True) -> "SmallCNN":
        super().train(mode)
        if self.freeze_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()  # moving statistics in the forward pass, no update; gamma / beta still train
        return self


class Embedder(nn.Module):
    """Backbone -> Linear(d); `forward` gives the raw head output (normalise with `F.normalize`)."""

    def __init__(self, backbone: SmallCNN, embedding_dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, embedding_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def init_like_keras(model: nn.Module) -> None:
    """Keras's default initialisers: Glorot-uniform kernels, zero biases (BN: gamma 1, beta 0)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def tfdnc_backbone(settings: dict, channels: int, with_weights: bool = True):
    """tfdnc's Keras backbone for these settings, built as tfdnc.train builds it (`_backbone`).

    `build_backbone(backbone, (S, S, C), weights=..., freeze_batchnorm=..., pixel_mode=...,
    batchnorm_momentum=..., batchnorm_epsilon=...)`, where a `backbone_weights` ending in ".keras" (a
    run's model.keras) goes through tfdnc's own `tfdnc.train.backbone_weights` hand-over: Keras loads the
    run's model and writes its backbone's weights (conv kernels, BatchNorm gamma / beta / moving mean /
    variance) to a `.weights.h5` file that `build_backbone` loads; nothing else of that run (its embedding
    head, masks, optimizer) comes along. The BatchNorm momentum / epsilon are this run's settings, not the
    pretraining run's. `with_weights=False`: the same build without `backbone_weights` (random init).
    Arguments this tfdnc's `build_backbone` lacks are passed only where set.
    """
    from tfdnc.backbones import build_backbone

    size = int(settings["image_size"])
    accepted = inspect.signature(build_backbone).parameters
    kwargs = {}
    for key in ("batchnorm_momentum", "batchnorm_epsilon", "pixel_mode"):
        if key in accepted and settings.get(key) is not None:
            kwargs[key] = settings[key]
    if settings.get("freeze_batchnorm"):
        kwargs["freeze_batchnorm"] = True
    name, shape = settings.get("backbone", "small_cnn"), (size, size, channels)
    weights = settings.get("backbone_weights") if with_weights else None
    if weights is None:
        return build_backbone(name, shape, **kwargs)
    from tfdnc.train import backbone_weights

    with backbone_weights(weights) as path:
        return build_backbone(name, shape, weights=path, **kwargs)


def keras_layers(model) -> list:
    """Every layer of a Keras model in order, nested models' layers in place of the nested model."""
    found = []
    for layer in getattr(model, "layers", []):
        found += keras_layers(layer) if hasattr(layer, "layers") else [layer]
    return found


def keras_batchnorm_settings(model) -> tuple[float, float]:
    """(momentum in Keras's convention, epsilon) of the first BatchNormalization layer of a Keras model."""
    import keras

    for layer in keras_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            return float(layer.momentum), float(layer.epsilon)
    raise RuntimeError("tfdnc's backbone has no BatchNormalization layer to read settings from")


def tfdnc_batchnorm_settings(settings: dict, channels: int) -> tuple[float, float]:
    """(momentum in Keras's convention, epsilon) of the BatchNorm tfdnc builds for these settings.

    Builds tfdnc's own backbone (tiny, random init) and reads its first
    BatchNormalization layer, passing `batchnorm_momentum` / `batchnorm_epsilon`
    only where this tfdnc's `build_backbone` accepts them.
    """
    return keras_batchnorm_settings(tfdnc_backbone(settings, channels, with_weights=False))


def copy_keras_backbone(keras_backbone, backbone: SmallCNN) -> int:
    """Copies a tfdnc small_cnn Keras backbone's weights into the torch replica; returns the tensors copied.

    Conv kernels HWIO -> OIHW (small_cnn's convolutions have no bias), BatchNorm gamma -> weight,
    beta -> bias, moving mean / variance -> running mean / var. Every weight of the Keras backbone must
    find its place (else a ValueError): what tfdnc loads into its backbone is what the replica gets.
    """
    import keras

    convs = [layer for layer in keras_layers(keras_backbone) if isinstance(layer, keras.layers.Conv2D)]
    bns = [layer for layer in keras_layers(keras_backbone) if isinstance(layer, keras.layers.BatchNormalization)]
    t_convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    t_bns = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    if len(convs) != len(t_convs) or len(bns) != len(t_bns):
        raise ValueError(f"peer: the Keras backbone has {len(convs)} conv / {len(bns)} BatchNorm layers, the "
                         f"replica {len(t_convs)} / {len(t_bns)}")
    pairs = []
    for k, t in zip(convs, t_convs):
        if k.use_bias or t.bias is not None:
            raise ValueError("peer: small_cnn's convolutions have no bias")
        pairs.append((np.transpose(k.kernel.numpy(), (3, 2, 0, 1)), t.weight))
    for k, t in zip(bns, t_bns):
        if not (k.center and k.scale):
            raise ValueError("peer: a BatchNorm without gamma or beta has no replica here")
        pairs += [(k.gamma.numpy(), t.weight), (k.beta.numpy(), t.bias),
                  (k.moving_mean.numpy(), t.running_mean), (k.moving_variance.numpy(), t.running_var)]
    if len(pairs) != len(keras_backbone.weights):
        raise ValueError(f"peer: the Keras backbone has {len(keras_backbone.weights)} weights, {len(pairs)} of them "
                         "have a place in the replica")
    with torch.no_grad():
        for value, target in pairs:
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"peer: a weight of shape {value.shape} does not fit {tuple(target.shape)}")
            target.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))
    return len(pairs)


# --- losses ------------------------------------------------------------------


def tfdnc_loss_config(settings: dict) -> dict:
    """The hyper-parameters of the loss tfdnc builds from these settings."""
    from tfdnc.losses import get_loss

    return get_loss(settings["loss"], **dict(settings.get("loss_options") or {})).get_config()


def build_peer_loss(name: str, cfg: dict):
    """(pml loss, pml miner or None, takes L2-normalised embeddings) matching tfdnc's loss `cfg`."""
    if name == "margin":
        if cfg.get("learnable_beta"):
            raise ValueError("peer: the margin loss's learnable beta is not replicated; drop learnable_beta")
        loss = losses.MarginLoss(margin=cfg["alpha"], nu=cfg.get("nu", 0.0), beta=cfg["beta"])
        miner = miners.DistanceWeightedMiner(cutoff=cfg["cutoff"], nonzero_loss_cutoff=cfg["nonzero_loss_cutoff"])
        return loss, miner, True
    if name == "multi_similarity":
        loss = losses.MultiSimilarityLoss(alpha=cfg["alpha"], beta=cfg["beta"], base=cfg["base"])
        miner = miners.MultiSimilarityMiner(epsilon=cfg["epsilon"])
        return loss, miner, True
    if name == "npair":
        # tfdnc's N-pair (as TensorFlow's npairs_loss) takes the raw embedding's inner products
        # plus 0.25 * w * (mean |a|^2 + mean |p|^2) = 0.5 * w * mean |x|^2; pml's default
        # would cosine-normalise first. Matched: raw dot products, squared-norm penalty w / 2.
        loss = losses.NPairsLoss(
            distance=distances.DotProductSimilarity(normalize_embeddings=False),
            embedding_regularizer=regularizers.LpRegularizer(p=2, power=2),
            embedding_reg_weight=0.5 * float(cfg.get("l2_regularization", 0.0)),
        )
        return loss, None, False
    if name == "proxy_anchor":
        # pml's default proxy initialisation (ProxyAnchorLoss.get_default_weight_init_func) is
        # tfdnc's and the authors': kaiming_normal_(mode="fan_out"), std sqrt(2 / num_classes).
        loss = losses.ProxyAnchorLoss(num_classes=cfg["num_classes"], embedding_size=cfg["embedding_dim"],
                                      margin=cfg["margin"], alpha=cfg["alpha"])
        return loss, None, True
    raise ValueError(f"peer: no pytorch-metric-learning counterpart for the loss {name!r} "
                     "(have: margin, multi_similarity, npair, proxy_anchor)")


class PeerObjective:
    """The peer's training loss for one step: pml's loss (+ miner), optionally in pml's CrossBatchMemory.

    Built from the config of the loss tfdnc builds (`tfdnc_loss_config`). A
    tfdnc `CrossBatchMemory` config (it has "memory_size") becomes pml's
    `CrossBatchMemory(loss, embedding_size, memory_size, miner)`, whose forward
    is tfdnc's default semantics: enqueue the batch, then the batch's anchors
    against the whole memory, self-pairs removed. tfdnc's `start_step` /
    `batch_loss` / `memory_weight` (the XBM authors' variant, which pml has
    no option for) are done here, as tfdnc does them: before `start_step`
    training steps the batch's own loss and no enqueue; after it
    `memory_weight` x the memory loss, plus the batch's own loss when
    `batch_loss`. `parameters()`: the loss's own trainable tensors (the
    Proxy-Anchor proxies), for their optimizer.

    Example:
    >>> objective = PeerObjective("margin", tfdnc_loss_config(settings))
    >>> loss = objective(F.normalize(model(x), dim=1), y, step)
    """

    def __init__(self, name: str, cfg: dict):
        self.memory = None
        if "memory_size" in cfg:
            inner = cfg["loss"]["config"] if "config" in cfg["loss"] else cfg["loss"]
            self.loss, self.miner, self.normalized = build_peer_loss(name, inner)
            self.memory = losses.CrossBatchMemory(self.loss, embedding_size=int(cfg["embedding_dim"]),
                                                  memory_size=int(cfg["memory_size"]), miner=self.miner)
            self.start_step = int(cfg.get("start_step", 0))
            self.batch_loss = bool(cfg.get("batch_loss", False))
            self.memory_weight = float(cfg.get("memory_weight", 1.0))
        else:
            self.loss, self.miner, self.normalized = build_peer_loss(name, cfg)

    def parameters(self) -> list[torch.Tensor]:
        return [p for p in self.loss.parameters() if p.requires_grad]

    def _batch(self, emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(emb, y, self.miner(emb, y)) if self.miner is not None else self.loss(emb, y)

    def __call__(self, emb: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        if self.memory is None or step < self.start_step:
            return self._batch(emb, y)
        loss = self.memory_weight * self.memory(emb, y)
        return loss + self._batch(emb, y) if self.batch_loss else loss


# --- images (through tfdnc's own transforms) ---------------------------------


def _loader(image_set, channels: int):
    # tfdnc's own loader (arrays, files, cached files, boxes): the same pixels on both sides.
    from tfdnc.data.pipeline import image_loader

    return image_loader(image_set, channels)


def train_images(image_set, indices: np.ndarray, seeds: np.ndarray, settings: dict, channels: int) -> np.ndarray:
    """float32 (n, S, S, C) in [0, 255]: tfdnc's training transform of `image_set[indices]`.

    The same ops as tfdnc.data.pipeline.make_train_dataset's `augment`
    (random_resized_crop with crop_scale / crop_ratio, then random_flip when
    `flip`), with per-image stateless seeds (n, 2).
    """
    import tensorflow as tf

    from tfdnc.data.transforms import random_flip, random_resized_crop

    size = int(settings["image_size"])
    load = _loader(image_set, channels)
    scale, ratio, flip = tuple(settings["crop_scale"]), tuple(settings["crop_ratio"]), bool(settings["flip"])

    def augment(index, seed):
        image = random_resized_crop(load(index), size, seed, scale, ratio)
        if flip:
            image = random_flip(image, seed + 1)
        image.set_shape([size, size, channels])
        return image

    data = tf.data.Dataset.from_tensor_slices((indices.astype(np.int32), seeds.astype(np.int32)))
    data = data.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(512)
    if not len(indices):
        return np.zeros((0, size, size, channels), np.float32)
    return np.concatenate([batch.numpy() for batch in data])


def is_deterministic_transform(settings: dict) -> bool:
    """True when tfdnc's training transform is the same for every draw (no augmentation)."""
    return (tuple(settings["crop_scale"]) == (1.0, 1.0) and tuple(settings["crop_ratio"]) == (1.0, 1.0)
            and not settings["flip"])


# --- training and evaluation ---------------------------------------------------


# TrainConfig settings the peer replicates only at these values
# (backbone_weights: None or any weights file tfdnc's small_cnn takes, a run's model.keras included: the
# replica gets what tfdnc's own hand-over loads, `tfdnc_backbone` + `copy_keras_backbone`; "imagenet"
# does not exist for small_cnn, tfdnc refuses it too)
_PLAIN = {"backbone": ("small_cnn",), "pixel_mode": (None, "scale"),
          "freeze_batchnorm": (False, True), "use_boxes": (False,), "mixed_precision": (None,), "strategy": ("default",),
          # weight averaging (issue 20) has no replica here yet; the learning-rate schedules do (`rate_factor`)
          "ema": (False,)}
# the per-epoch test metrics kept in "epoch_results"
_EPOCH_KEYS = ("recall@1", "map@r", "nmi")


def rate_factor(settings: dict, step: int, steps_per_epoch: int) -> float:
    """tfdnc's `WarmupDecay.shape(step)` (tfdnc/training/lr.py) for the run's settings: the factor on every
    base rate at 0-based step `step`, as `tfdnc.train.learning_rate_schedule` builds it."""
    epochs = int(settings["epochs"])
    total = epochs * steps_per_epoch
    warmup = min(int(settings.get("warmup_epochs") or 0), epochs - 1) * steps_per_epoch
    factor = min(1.0, (step + 1.0) / warmup) if warmup else 1.0
    decay = settings.get("lr_schedule") or "constant"
    if decay == "cosine":
        progress = min(max((step - warmup) / float(max(1, total - warmup)), 0.0), 1.0)
        factor *= 0.5 * (1.0 + math.cos(math.pi * progress))
    elif decay == "step":
        for fraction in settings.get("lr_milestones") or (0.5, 0.75):
            if step >= round(float(fraction) * total):
                factor *= float(settings.get("lr_gamma", 0.1))
    elif decay != "constant":
        raise ValueError(f"peer: lr_schedule {decay!r} has no replica here")
    return factor


def _first_result(result: dict) -> dict:
    """The first evaluation set's metrics of a ProtocolResult dict (the test set), as summarise_run reads them."""
    results = result["results"]
    return results.get("test") or next(iter(results.values()))


def seed_everything(seed: int) -> None:
    """torch, NumPy, Python and pytorch-metric-learning's own NumPy generator (sampler, miners)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    pml_common.NUMPY_RANDOM = np.random.RandomState(seed)


def train_peer(settings: dict, splits, verbose: bool = False) -> dict:
    """Trains and evaluates the peer on `splits` (tfdnc DataSplits); returns metrics and timings.

    Returns a dict with "after" (tfdnc ProtocolResult.to_dict()), "steps",
    "epoch_loop_seconds" (wall time of each epoch's training loop: batch
    gather, forward, miner, loss, backward, optimizer step; not the
    augmentation, which is done before the epoch's clock starts, nor
    evaluation), "train_seconds" (their sum) and "settings_used".
    """
    from tfdnc.data.pipeline import image_channels, make_eval_dataset
    from tfdnc.evaluation.callback import evaluation_due
    from tfdnc.evaluation.protocols import run_protocol

    unsupported = {key: settings[key] for key, ok in _PLAIN.items() if key in settings and settings[key] not in ok}
    if unsupported:
        raise ValueError(f"peer: these settings have no torch replica here: {unsupported}")
    seed = int(settings["seed"])
    seed_everything(seed)
    train_set = splits.train
    channels = image_channels(train_set)
    # tfdnc's backbone as tfdnc.train builds it for these settings: its BatchNorm settings and, with
    # backbone_weights (the papers' regime: a run's model.keras), the pretrained weights it loads
    keras_backbone = tfdnc_backbone(settings, channels)
    momentum, epsilon = keras_batchnorm_settings(keras_backbone)
    loss_cfg = tfdnc_loss_config(settings)
    objective = PeerObjective(settings["loss"], loss_cfg)

    seed_everything(seed)
    # width 32: what tfdnc.train builds (build_backbone's default)
    frozen = bool(settings.get("freeze_batchnorm"))
    model = Embedder(SmallCNN(channels, 32, momentum, epsilon, freeze_batchnorm=frozen), int(settings["embedding_dim"]))
    init_like_keras(model)  # the head starts fresh on both sides, also with pretrained backbone weights
    copied = copy_keras_backbone(keras_backbone, model.backbone) if settings.get("backbone_weights") else 0
    del keras_backbone
    wd = float(settings["weight_decay"])
    # Keras Adam's epsilon is 1e-7 (torch's 1e-8). "coupled": torch Adam's L2 (g + wd * w), what
    # tfdnc does by default; "decoupled": Keras Adam's weight_decay = torch AdamW's.
    if settings.get("weight_decay_mode", "coupled") == "decoupled":
        optimizer = torch.optim.AdamW(model.parameters(), lr=float(settings["learning_rate"]), eps=1e-7, weight_decay=wd)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=float(settings["learning_rate"]), eps=1e-7, weight_decay=wd)
    base_lr = float(settings["learning_rate"])  # times `rate_factor` each step: tfdnc's WarmupDecay
    # The loss's own parameters (proxies): Adam of their own at `loss_learning_rate` (None: the network's lr),
    # no weight decay, as tfdnc's model.loss_optimizer (tfdnc/model.py, train_step).
    loss_params = objective.parameters()
    loss_lr = float(settings.get("loss_learning_rate") or settings["learning_rate"])
    loss_optimizer = torch.optim.Adam(loss_params, lr=loss_lr, eps=1e-7) if loss_params else None

    labels = torch.as_tensor(np.unique(train_set.labels, return_inverse=True)[1].reshape(-1), dtype=torch.long)
    p, m = int(settings["classes_per_batch"]), int(settings["images_per_class"])
    batch = p * m
    steps = int(settings.get("steps_per_epoch") or math.ceil(len(train_set) / batch))
    sampler = samplers.MPerClassSampler(labels.numpy(), m=m, batch_size=batch, length_before_new_iter=steps * batch)
    fixed = is_deterministic_transform(settings)
    if fixed:
        everything = torch.from_numpy(train_images(
            train_set, np.arange(len(train_set)), np.zeros((len(train_set), 2), np.int64), settings, channels))
    rng = np.random.default_rng([seed, 2])

    size = int(settings["image_size"])
    resize = settings.get("resize_size") or size

    @torch.no_grad()
    def embed(image_set):
        model.eval()
        parts = [F.normalize(model(torch.from_numpy(x.numpy())), dim=1).numpy()
                 for x in make_eval_dataset(image_set, size, resize, batch_size=256)]
        return np.concatenate(parts)

    def evaluate() -> dict:
        return run_protocol(splits, embed).to_dict()

    epochs = int(settings["epochs"])
    every = int(settings.get("eval_every") or epochs)
    epoch_seconds, epoch_cpu_seconds, losses_seen, epoch_results = [], [], [], []
    for epoch in range(epochs):
        order = np.fromiter(iter(sampler), dtype=np.int64)
        if fixed:
            pixels = everything[torch.from_numpy(order)]
        else:  # this epoch's crops, made before its clock starts
            seeds = rng.integers(0, 2**31 - 1, size=(len(order), 2), dtype=np.int64)
            pixels = torch.from_numpy(train_images(train_set, order, seeds, settings, channels))
        batch_labels = labels[torch.from_numpy(order)]
        model.train()
        start, cpu_start = time.perf_counter(), time.process_time()
        total = 0.0
        for step in range(steps):
            factor = rate_factor(settings, epoch * steps + step, steps)
            for opt, base in ((optimizer, base_lr), (loss_optimizer, loss_lr)):
                if opt is not None:
                    for group in opt.param_groups:
                        group["lr"] = base * factor
            x = pixels[step * batch:(step + 1) * batch]
            y = batch_labels[step * batch:(step + 1) * batch]
            out = model(x)
            emb = F.normalize(out, dim=1) if objective.normalized else out
            loss = objective(emb, y, epoch * steps + step)
            optimizer.zero_grad(set_to_none=True)
            if loss_optimizer is not None:
                loss_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if loss_optimizer is not None:
                loss_optimizer.step()
            total += float(loss.detach())
        epoch_seconds.append(time.perf_counter() - start)
        epoch_cpu_seconds.append(time.process_time() - cpu_start)
        losses_seen.append(total / steps)
        if verbose:
            print(f"[peer] epoch {epoch + 1}: loss {total / steps:.4f}, {epoch_seconds[-1]:.1f} s", flush=True)
        # after the epochs tfdnc evaluates too (RetrievalEvaluation.from_protocol: no forced first epoch),
        # outside the epoch's clock
        if epoch + 1 < epochs and evaluation_due(epoch, every, epochs, first=False):
            first = _first_result(evaluate())
            epoch_results.append({"epoch": epoch + 1, **{k: first[k] for k in _EPOCH_KEYS if k in first}})
            model.train()

    result = run_protocol(splits, embed)
    first = _first_result(result.to_dict())
    epoch_results.append({"epoch": epochs, **{k: first[k] for k in _EPOCH_KEYS if k in first}})
    return {
        "after": result.to_dict(),
        "epoch_results": epoch_results,
        "steps": steps * int(settings["epochs"]),
        "epoch_loop_seconds": epoch_seconds,
        "epoch_loop_cpu_seconds": epoch_cpu_seconds,  # CPU seconds of the process (all threads) in that loop
        "train_seconds": float(sum(epoch_seconds)),
        # pml's memory buffers (float32 embeddings, int64 labels), as tfdnc's "xbm_bytes"
        "xbm_bytes": None if objective.memory is None else sum(
            b.numel() * b.element_size() for b in objective.memory.buffers()),
        "epoch_losses": losses_seen,
        "settings_used": {
            "batchnorm_momentum_keras": momentum, "batchnorm_epsilon": epsilon, "loss": loss_cfg,
            "backbone_weights": settings.get("backbone_weights"), "backbone_tensors_copied": copied,
            "freeze_batchnorm": frozen,
            "optimizer": type(optimizer).__name__, "adam_epsilon": 1e-7, "steps_per_epoch": steps,
            "loss_lr": loss_lr if loss_params else None,
            "memory": None if objective.memory is None else {
                "memory_size": objective.memory.memory_size, "start_step": objective.start_step,
                "batch_loss": objective.batch_loss, "memory_weight": objective.memory_weight},
            "augmentation": "none (deterministic tfdnc transform)" if fixed else "tfdnc random_resized_crop/flip",
        },
    }


# --- parity check -------------------------------------------------------------


def parity_check(image_size: int = 28, channels: int = 1, embedding_dim: int = 64, seed: int = 0) -> dict:
    """Copies a tfdnc small_cnn + head's weights into the torch replica and compares outputs.

    Returns the largest absolute difference of the L2-normalised embeddings
    in inference mode ("eval") and with batch statistics ("train", the BN
    moving statistics then updated on both sides and compared too).
    """
    import keras

    from tfdnc.backbones import build_backbone

    keras.utils.set_random_seed(seed)
    backbone = build_backbone("small_cnn", (image_size, image_size, channels))
    head = keras.layers.Dense(embedding_dim)
    inputs = keras.Input((image_size, image_size, channels))
    tf_model = keras.Model(inputs, head(backbone(inputs)))
    bns = [layer for layer in keras_layers(backbone) if isinstance(layer, keras.layers.BatchNormalization)]
    momentum, epsilon = keras_batchnorm_settings(backbone)
    model = Embedder(SmallCNN(channels, 32, momentum, epsilon), embedding_dim)
    t_bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    copy_keras_backbone(backbone, model.backbone)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(head.kernel.numpy().T))
        model.head.bias.copy_(torch.from_numpy(head.bias.numpy()))
    x = np.random.default_rng(seed).uniform(0, 255, (16, image_size, image_size, channels)).astype(np.float32)
    out = {}
    for mode in ("eval", "train"):
        training = mode == "train"
        model.train(training)
        with torch.no_grad():
            t_emb = F.normalize(model(torch.from_numpy(x)), dim=1).numpy()
        k_emb = tf_model(x, training=training).numpy()
        k_emb = k_emb / np.linalg.norm(k_emb, axis=1, keepdims=True)
        out[f"{mode}_max_abs_diff"] = float(np.abs(t_emb - k_emb).max())
    out["moving_mean_max_abs_diff"] = max(
        float(np.abs(k.moving_mean.numpy() - t.running_mean.numpy()).max()) for k, t in zip(bns, t_bns))
    # Keras updates the moving variance with the biased batch variance, torch with the unbiased one.
    out["moving_variance_max_rel_diff"] = max(
        float(np.abs(k.moving_variance.numpy() / t.running_var.numpy() - 1).max()) for k, t in zip(bns, t_bns))
    out["batchnorm_momentum_keras"], out["batchnorm_epsilon"] = momentum, epsilon
    out["parameters_torch"] = sum(p.numel() for p in model.parameters())
    out["parameters_keras"] = int(sum(np.prod(v.shape) for v in tf_model.trainable_weights))
    return out


def pretrained_parity_check(backbone_weights: str, dataset: str, freeze_batchnorm: bool = True, images: int = 64,
                            seed: int = 0) -> dict:
    """The papers' regime's backbone on both sides: tfdnc's Keras backbone as tfdnc.train builds it from
    `backbone_weights` (a run's model.keras) against the torch replica the peer builds from it.

    Images: the first `images` test images of `dataset` as the evaluation pipeline gives them, plus as
    many uniform-noise images. Both sides in training mode (Keras `training=True`, torch `train()`), which
    with `freeze_batchnorm` normalises with the moving statistics on both. Returns the largest absolute
    difference of the pooled features ("features_train_*"; also in inference mode), the same relative to
    the largest feature ("..._rel"), whether a training-mode forward moved any moving statistic on either
    side, the gradients of a random linear read-out of the features with respect to every trainable
    backbone weight (conv kernels, gamma, beta) on both sides (largest difference relative to the largest
    gradient of its tensor), the trainable counts, and the hand-over check: the built backbone's weights
    against those of the backbone inside the model.keras (loaded with tfdnc.load_model, i.e. Keras).
    """
    import keras
    import tensorflow as tf

    import tfdnc
    from tfdnc.data.pipeline import image_channels, make_eval_dataset
    from tfdnc.datasets import load_dataset

    splits = load_dataset(dataset)
    channels = image_channels(splits.test)
    size = int(splits.test.images.shape[1])
    settings = {"image_size": size, "backbone_weights": backbone_weights, "freeze_batchnorm": freeze_batchnorm}
    k_backbone = tfdnc_backbone(settings, channels)
    momentum, epsilon = keras_batchnorm_settings(k_backbone)
    backbone = SmallCNN(channels, 32, momentum, epsilon, freeze_batchnorm=freeze_batchnorm)
    copied = copy_keras_backbone(k_backbone, backbone)

    real = next(iter(make_eval_dataset(splits.test, size, size, batch_size=images))).numpy().astype(np.float32)
    noise = np.random.default_rng(seed).uniform(0, 255, real.shape).astype(np.float32)
    x = np.concatenate([real, noise])
    out = {"backbone_weights": backbone_weights, "dataset": dataset, "images": int(len(x)),
           "freeze_batchnorm": freeze_batchnorm, "batchnorm_momentum_keras": momentum, "batchnorm_epsilon": epsilon,
           "tensors_copied": copied}

    saved = tfdnc.load_model(backbone_weights, compile=False).backbone
    out["handover_max_abs_diff"] = max(float(np.abs(a - b).max())
                                       for a, b in zip(saved.get_weights(), k_backbone.get_weights()))
    k_bns = [layer for layer in keras_layers(k_backbone) if isinstance(layer, keras.layers.BatchNormalization)]
    t_bns = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    stats_before = [(k.moving_mean.numpy().copy(), k.moving_variance.numpy().copy()) for k in k_bns]
    t_stats_before = [(t.running_mean.clone(), t.running_var.clone()) for t in t_bns]

    for mode in ("eval", "train"):
        training = mode == "train"
        backbone.train(training)
        with torch.no_grad():
            t_feat = backbone(torch.from_numpy(x)).numpy()
        k_feat = k_backbone(x, training=training).numpy()
        diff = float(np.abs(t_feat - k_feat).max())
        out[f"features_{mode}_max_abs_diff"] = diff
        out[f"features_{mode}_max_abs"] = float(np.abs(k_feat).max())
        out[f"features_{mode}_rel"] = diff / float(np.abs(k_feat).max())
    out["keras_moving_stats_moved"] = any(
        not (np.array_equal(k.moving_mean.numpy(), m) and np.array_equal(k.moving_variance.numpy(), v))
        for k, (m, v) in zip(k_bns, stats_before))
    out["torch_running_stats_moved"] = any(
        not (torch.equal(t.running_mean, m) and torch.equal(t.running_var, v)) for t, (m, v) in zip(t_bns, t_stats_before))
    out["torch_batchnorm_modules_in_training_mode"] = sum(t.training for t in t_bns)

    # gradients of one random read-out of the features, training mode on both sides
    readout = np.random.default_rng(seed + 1).normal(size=(k_feat.shape[1],)).astype(np.float32)
    backbone.train(True)
    backbone.zero_grad(set_to_none=True)
    (backbone(torch.from_numpy(x)) @ torch.from_numpy(readout)).sum().backward()
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(tf.linalg.matvec(k_backbone(x, training=True), readout))
    k_grads = tape.gradient(value, k_backbone.trainable_weights)
    t_params = [p for m in backbone.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))
                for p in m.parameters(recurse=False) if p.requires_grad]
    t_grads = [np.transpose(p.grad.numpy(), (2, 3, 1, 0)) if p.dim() == 4 else p.grad.numpy() for p in t_params]
    out["trainable_tensors_keras"], out["trainable_tensors_torch"] = len(k_grads), len(t_grads)
    out["trainable_parameters_keras"] = int(sum(np.prod(v.shape) for v in k_backbone.trainable_weights))
    out["trainable_parameters_torch"] = int(sum(p.numel() for p in t_params))
    out["gradients_max_rel_diff"] = max(
        float(np.abs(k.numpy() - t).max() / max(np.abs(k.numpy()).max(), 1e-12)) for k, t in zip(k_grads, t_grads))
    out["passes"] = bool(out["features_train_rel"] < 1e-3 and out["features_eval_rel"] < 1e-3
                         and out["handover_max_abs_diff"] == 0.0
                         # frozen: no statistic moves on either side; plain BatchNorm: both update theirs
                         and out["keras_moving_stats_moved"] == out["torch_running_stats_moved"] == (not freeze_batchnorm)
                         # batch statistics' backward sums float32 rounding over the batch: 1e-2 there
                         and out["gradients_max_rel_diff"] < (1e-3 if freeze_batchnorm else 1e-2)
                         and out["trainable_parameters_keras"] == out["trainable_parameters_torch"])
    return out


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Checks the torch replica against tfdnc's small_cnn + head; with "
                                                 "--backbone-weights, against tfdnc's pretrained backbone (papers' regime).")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--backbone-weights", default=None,
                        help="a run's model.keras ('{dataset}' replaced by each of --datasets), e.g. "
                             "runs/suite-backbones/{dataset}/model.keras: checks the pretrained backbone instead")
    parser.add_argument("--datasets", nargs="+", default=["shapes"], help="with --backbone-weights: the targets")
    parser.add_argument("--no-freeze-batchnorm", action="store_true", help="with --backbone-weights: plain BatchNorm")
    args = parser.parse_args()
    if args.backbone_weights:
        for name in args.datasets:
            print(json.dumps(pretrained_parity_check(args.backbone_weights.replace("{dataset}", name), name,
                                                     freeze_batchnorm=not args.no_freeze_batchnorm), indent=1))
    else:
        print(json.dumps(parity_check(args.image_size, args.channels), indent=1))
