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
    """

    def __init__(self, channels: int, width: int = 32, bn_momentum: float = 0.9, bn_epsilon: float = 1e-5):
        super().__init__()
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


def tfdnc_batchnorm_settings(settings: dict, channels: int) -> tuple[float, float]:
    """(momentum in Keras's convention, epsilon) of the BatchNorm tfdnc builds for these settings.

    Builds tfdnc's own backbone (tiny) and reads its first BatchNormalization
    layer, passing `batchnorm_momentum` / `batchnorm_epsilon` only where this
    tfdnc's `build_backbone` accepts them.
    """
    import keras

    from tfdnc.backbones import build_backbone

    size = int(settings["image_size"])
    kwargs = {}
    accepted = inspect.signature(build_backbone).parameters
    for key in ("batchnorm_momentum", "batchnorm_epsilon"):
        if key in accepted and settings.get(key) is not None:
            kwargs[key] = settings[key]
    model = build_backbone(settings.get("backbone", "small_cnn"), (size, size, channels), **kwargs)
    stack = [model]
    while stack:
        layer = stack.pop(0)
        if isinstance(layer, keras.layers.BatchNormalization):
            return float(layer.momentum), float(layer.epsilon)
        stack.extend(getattr(layer, "layers", []))
    raise RuntimeError("tfdnc's backbone has no BatchNormalization layer to read settings from")


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
_PLAIN = {"backbone": ("small_cnn",), "backbone_weights": (None,), "pixel_mode": (None, "scale"),
          "freeze_batchnorm": (False,), "use_boxes": (False,), "mixed_precision": (None,), "strategy": ("default",),
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
    momentum, epsilon = tfdnc_batchnorm_settings(settings, channels)
    loss_cfg = tfdnc_loss_config(settings)
    objective = PeerObjective(settings["loss"], loss_cfg)

    seed_everything(seed)
    # width 32: what tfdnc.train builds (build_backbone's default)
    model = Embedder(SmallCNN(channels, 32, momentum, epsilon), int(settings["embedding_dim"]))
    init_like_keras(model)
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
    epoch_seconds, losses_seen, epoch_results = [], [], []
    for epoch in range(epochs):
        order = np.fromiter(iter(sampler), dtype=np.int64)
        if fixed:
            pixels = everything[torch.from_numpy(order)]
        else:  # this epoch's crops, made before its clock starts
            seeds = rng.integers(0, 2**31 - 1, size=(len(order), 2), dtype=np.int64)
            pixels = torch.from_numpy(train_images(train_set, order, seeds, settings, channels))
        batch_labels = labels[torch.from_numpy(order)]
        model.train()
        start = time.perf_counter()
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
        "train_seconds": float(sum(epoch_seconds)),
        # pml's memory buffers (float32 embeddings, int64 labels), as tfdnc's "xbm_bytes"
        "xbm_bytes": None if objective.memory is None else sum(
            b.numel() * b.element_size() for b in objective.memory.buffers()),
        "epoch_losses": losses_seen,
        "settings_used": {
            "batchnorm_momentum_keras": momentum, "batchnorm_epsilon": epsilon, "loss": loss_cfg,
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
    convs, bns = [], []
    stack = [tf_model]
    while stack:
        layer = stack.pop(0)
        if isinstance(layer, keras.layers.Conv2D):
            convs.append(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            bns.append(layer)
        stack.extend(getattr(layer, "layers", []))
    momentum, epsilon = float(bns[0].momentum), float(bns[0].epsilon)
    model = Embedder(SmallCNN(channels, 32, momentum, epsilon), embedding_dim)
    t_convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    t_bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for k, t in zip(convs, t_convs):
            t.weight.copy_(torch.from_numpy(np.transpose(k.kernel.numpy(), (3, 2, 0, 1))))
        for k, t in zip(bns, t_bns):
            t.weight.copy_(torch.from_numpy(k.gamma.numpy()))
            t.bias.copy_(torch.from_numpy(k.beta.numpy()))
            t.running_mean.copy_(torch.from_numpy(k.moving_mean.numpy()))
            t.running_var.copy_(torch.from_numpy(k.moving_variance.numpy()))
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


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Checks the torch replica against tfdnc's small_cnn + head.")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(parity_check(args.image_size, args.channels), indent=1))
