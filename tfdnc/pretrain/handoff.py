"""Handing the pretrained trunk over to metric learning.

The backbones are fully convolutional with global pooling, so weights
learnt on small tiles load unchanged into a backbone built for full images.
Only the BatchNormalization statistics depend on the input distribution:
they were collected on normalised tiles, so `recalibrate_batchnorm`
recomputes them on full-size target images before the weights are saved.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from tfdnc.backbones import build_backbone

WEIGHTS_SUFFIX = ".weights.h5"


def check_weights_path(path: str, arg: str = "--out") -> str:
    """Keras saves weights only to `*.weights.h5`; fail early with the argument name."""
    path = os.fspath(path)
    if not path.endswith(WEIGHTS_SUFFIX):
        raise ValueError(f"{arg} must end with {WEIGHTS_SUFFIX!r} (Keras weights file), got {path!r}")
    return path


def _batchnorm_layers(model):
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.layers.BatchNormalization):
            yield layer
        yield from _batchnorm_layers(layer)


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> int:
    """Sets the momentum of every BatchNormalization layer; returns how many.

    Short pretext runs use a lower momentum than Keras' 0.99, so the moving
    statistics that held-out scoring relies on follow the weights within a
    block of steps.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"--bn-momentum must be in [0, 1), got {momentum}")
    layers = list(_batchnorm_layers(model))
    for layer in layers:
        layer.momentum = momentum
    return len(layers)


def recalibrate_batchnorm(model: keras.Model, images: np.ndarray, batch_size: int = 128) -> int:
    """Replaces BatchNormalization moving statistics by their mean over `images`.

    Runs the model in training mode over the images (weights untouched) with
    momentum k / (k + 1) at batch k, which makes each moving statistic the
    exact average of the per-batch statistics. Returns the number of batches.
    """
    layers = list(_batchnorm_layers(model))
    if not layers or len(images) == 0:
        return 0
    saved = [layer.momentum for layer in layers]
    batches = 0
    try:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            if len(chunk) < 2 and batches:
                break
            for layer in layers:
                layer.momentum = batches / (batches + 1.0)
            model(np.asarray(chunk, dtype=np.float32), training=True)
            batches += 1
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum
    return batches


def export_backbone_weights(
    backbone: keras.Model,
    path: str,
    backbone_name: str,
    image_shape: tuple[int, int, int],
    calibration_images: np.ndarray | None = None,
    metadata: dict | None = None,
    **backbone_options,
) -> keras.Model:
    """Saves a trunk's weights so `build_backbone(name, image_shape, weights=path)` loads them.

    The weights are moved into a backbone built for `image_shape` (which
    checks that they fit), BatchNormalization statistics are recomputed on
    `calibration_images` (uint8/float (M, *image_shape) in [0, 255]) if given,
    and a JSON sidecar `<path minus .weights.h5>.json` records `metadata`.
    Returns the full-size backbone.
    """
    path = check_weights_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path[: -len(WEIGHTS_SUFFIX)] + ".tmp" + WEIGHTS_SUFFIX
    backbone.save_weights(tmp)
    try:
        full = build_backbone(backbone_name, tuple(image_shape), weights=tmp, **backbone_options)
    finally:
        os.remove(tmp)
    batches = 0
    if calibration_images is not None:
        batches = recalibrate_batchnorm(full, calibration_images)
    full.save_weights(path)
    info = {"backbone": backbone_name, "image_shape": list(image_shape),
            "batchnorm_recalibrated_batches": batches, **backbone_options, **(metadata or {})}
    with open(path[: -len(WEIGHTS_SUFFIX)] + ".json", "w") as f:
        json.dump(info, f, indent=2, sort_keys=True, default=str)
    return full


def backbone_weights_from_model(model_path: str, out: str) -> str:
    """Writes the backbone of a trained tfdnc model (a run's model.keras) to `out` (`*.weights.h5`).

    The emulated papers' regime (docs: "The papers' regime without ImageNet")
    pretrains with a supervised K = 1 run on one data set and starts D&C on
    another from its backbone: `train.py --backbone-weights RUN/model.keras`
    calls this. Returns `out`.

    Raises:
        ValueError naming --backbone-weights when the file holds no tfdnc model with a backbone.
    """
    from tfdnc.model import load_model

    try:
        model = load_model(model_path, compile=False)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"--backbone-weights {model_path!r}: not a model.keras saved by tfdnc ({exc})") from exc
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, keras.Model):
        raise ValueError(f"--backbone-weights {model_path!r}: the model has no backbone to hand over")
    backbone.save_weights(check_weights_path(out, "--backbone-weights"))
    return out
