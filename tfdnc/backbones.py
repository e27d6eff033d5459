"""Backbones: image -> pooled feature vector (the "penultimate" features).

Every backbone built here is a Keras model taking images with pixel values in
[0, 255] (any float dtype) and returning globally pooled features. The pixel
normalisation the backbone's weights expect is the first layer of the model,
so callers never preprocess by hand.

BatchNorm: `freeze_batchnorm=True` swaps every BatchNormalization layer for
:class:`BatchNormalization` (this module's subclass), which always
normalises with the fixed moving statistics but keeps gamma and beta
trainable, as the authors' code does (see the class). `batchnorm_momentum`
and `batchnorm_epsilon` set the BN hyper-parameters; small_cnn defaults to
torch's values.
"""

from __future__ import annotations

import os
from typing import Callable

import keras

from tfdnc.hub_backbones import (
    HUB_PREFIX,
    build_hub_backbone,
    check_hub_backbone,
    is_hub_backbone,
)
from tfdnc.layers.normalization import PixelNormalization

# name -> (constructor, pixel mode its ImageNet weights were trained with)
_APPLICATIONS: dict[str, tuple[Callable, str]] = {
    "resnet50": (keras.applications.ResNet50, "caffe"),
    "resnet101": (keras.applications.ResNet101, "caffe"),
    "resnet152": (keras.applications.ResNet152, "caffe"),
    "resnet50v2": (keras.applications.ResNet50V2, "tf"),
    "mobilenetv2": (keras.applications.MobileNetV2, "tf"),
    "mobilenetv3small": (keras.applications.MobileNetV3Small, "none"),
    "efficientnetb0": (keras.applications.EfficientNetB0, "none"),
    "efficientnetv2b0": (keras.applications.EfficientNetV2B0, "none"),
    "densenet121": (keras.applications.DenseNet121, "torch"),
    "inceptionv3": (keras.applications.InceptionV3, "tf"),
    "convnexttiny": (keras.applications.ConvNeXtTiny, "none"),
}

SMALL_CNN = "small_cnn"
BACKBONES = tuple(sorted(_APPLICATIONS)) + (SMALL_CNN,)

# small_cnn's BatchNorm hyper-parameters: torch's defaults (momentum 0.1 in
# torch's convention, i.e. the old statistics keep 0.9 of their weight, and
# eps 1e-5), not Keras's (0.99, 1e-3). The authors' backbones are torch
# models with these values; on short runs they also train a better
# embedding here (one Multi-Similarity run, MAP@R 63.2 with torch's values
# vs 56.2 with Keras's), because the moving statistics that evaluation uses
# keep up with the weights.
SMALL_CNN_BATCHNORM_MOMENTUM = 0.9
SMALL_CNN_BATCHNORM_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="tfdnc")
class BatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization that can normalise with fixed statistics while gamma/beta train.

    With `freeze_statistics=True` (the default) the layer always runs as in
    inference: it normalises with `moving_mean` / `moving_variance` and never
    updates them, whatever `training` says, but it stays trainable, so the
    optimiser still updates `gamma` and `beta`. This is what the authors' code
    does with `module.eval()` on every `BatchNorm2d` of the ResNet-50
    (CompVis/metric-learning-divide-and-conquer: lib/model.py:24-28;
    CompVis/metric-learning-divide-and-conquer-improved:
    metriclearning/model/resnet.py:17-22); the BN parameters stay in the
    optimiser there (lib/model.py:33-46 puts every parameter into the
    'backbone' group). Keras's own way, `layer.trainable = False`, freezes
    gamma and beta as well.

    With `freeze_statistics=False` it is exactly `keras.layers.BatchNormalization`.

    The class is deliberately called `BatchNormalization`: Keras 3 addresses
    a layer's variables in `.weights.h5` / `.keras` files by the snake-cased
    class name (keras/src/saving/saving_lib.py, `_save_container_state`), so
    with the same name a frozen backbone's weight files and a plain
    backbone's load into each other. It is registered as
    "tfdnc>BatchNormalization", so `keras.saving.load_model` finds it once
    `tfdnc.backbones` is imported.

    Args:
        freeze_statistics: normalise with the moving statistics always.
        **kwargs: as `keras.layers.BatchNormalization`.
    """

    def __init__(self, freeze_statistics: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.freeze_statistics = bool(freeze_statistics)

    def call(self, inputs, training=None, mask=None):
        if self.freeze_statistics:
            training = False
        if training is True and mask is None and self._fusable(inputs):
            return self._fused_training_call(inputs)
        return super().call(inputs, training=training, mask=mask)

    def _fusable(self, inputs) -> bool:
        """Whether TensorFlow's fused kernel can do this training step: NHWC float32 over the channels.

        Never for a `synchronized` layer: the fused kernel takes the moments
        of this replica's slice only, where `synchronized=True` (set by
        `tfdnc.distributed.synchronize_batchnorm`) all-reduces them across
        replicas, so two replicas would train differently from one device.
        """
        return (keras.backend.backend() == "tensorflow" and not self.synchronized and len(inputs.shape) == 4
                and self.axis in (-1, 3)
                and inputs.dtype == "float32" and self.center and self.scale and self.moving_mean.dtype == "float32")

    def _fused_training_call(self, inputs):
        """Keras 3's training step in one fused kernel (same result and moving statistics).

        Keras 3's BatchNormalization computes the moments and the
        normalisation as separate ops on the TensorFlow backend; on the CPU
        its forward + backward in the small CNN cost 33.5 ms against 27.1 ms
        with frozen statistics, the gap between tfdnc's step and the torch
        peer's (docs/bench/suite.md, "Speed"). The fused kernel normalises
        with the biased batch variance, as Keras does, and returns the
        unbiased one (Bessel's correction), which is turned back into the
        biased one Keras folds into `moving_variance`.
        """
        import tensorflow as tf

        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma, self.beta, epsilon=self.epsilon, is_training=True, data_format="NHWC")
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], variance.dtype)
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return outputs

    def get_config(self):
        return {**super().get_config(), "freeze_statistics": self.freeze_statistics}


def check_backbone(
    name: str, pooling: str | None = None, freeze_layers: int = 0, layer_decay: float = 1.0
) -> None:
    """Checks a backbone name and its transformer options before anything is built.

    A `hub:` name is checked by `tfdnc.hub_backbones.check_hub_backbone`
    (a local folder's config.json, or KerasHub's preset list: no download).
    Raises ValueError in one line naming the flag.
    """
    if is_hub_backbone(name):
        check_hub_backbone(name)
    else:
        _check_name(name)
        for flag, given in (("--backbone-pooling", pooling is not None), ("--freeze-backbone-layers", freeze_layers),
                            ("--layer-decay", layer_decay != 1.0)):
            if given:
                raise ValueError(f"{flag} applies to {HUB_PREFIX} transformer backbones, not {name!r}")
    if int(freeze_layers) < 0:
        raise ValueError(f"--freeze-backbone-layers must be >= 0, got {freeze_layers}")
    if not 0 < layer_decay <= 1:
        raise ValueError(f"--layer-decay must be in (0, 1], got {layer_decay}")
    if pooling is not None and pooling not in ("class", "mean"):
        raise ValueError(f"--backbone-pooling must be 'class' or 'mean', got {pooling!r}")


def default_pixel_mode(name: str) -> str:
    """The pixel normalisation a backbone's pretrained weights expect."""
    _check_name(name)
    return "scale" if name == SMALL_CNN else _APPLICATIONS[name][1]


def build_backbone(
    name: str = "resnet50", input_shape: tuple[int, int, int] = (224, 224, 3), weights: str | None = None,
    freeze_batchnorm: bool = False, pixel_mode: str | None = None, width: int = 32,
    batchnorm_momentum: float | None = None, batchnorm_epsilon: float | None = None,
    pooling: str | None = None, freeze_layers: int = 0,
) -> keras.Model:
    """Builds a backbone that maps [0, 255] images to pooled features.

    Args:
        name: one of `BACKBONES`: a `keras.applications` model or "small_cnn",
            a four-block CNN for tiny images (MNIST-sized); or "hub:PRESET",
            a KerasHub ViT / DINOv2 / DINOv3 (see `tfdnc.hub_backbones`).
        input_shape: (height, width, channels); `None` sides are allowed.
        weights: None (random init), "imagenet" (downloaded by Keras on first
            use), or the path of a weights file: either one written by
            `backbone.save_weights` (e.g. by `tfdnc.pretrain`) or a
            keras.applications no-top weights file for the named model.
        freeze_batchnorm: every BatchNormalization layer normalises with its
            fixed moving statistics (never updated) while gamma and beta
            still train, as the authors' code does for ResNet-50 (the layers
            become this module's `BatchNormalization`, see there).
        pixel_mode: override the pixel normalisation (see
            `PixelNormalization`); default: what `weights` expects.
        width: channels of the first small_cnn block (doubles each block).
        batchnorm_momentum: momentum of the moving statistics in Keras's
            convention (new = momentum * old + (1 - momentum) * batch; torch's
            momentum m is 1 - m here), in [0, 1). None: 0.9 (torch's default)
            for small_cnn, the model's own (0.99 for the ResNets, 0.999 for
            MobileNetV2) for keras.applications trunks.
        batchnorm_epsilon: the variance epsilon, > 0. None: 1e-5 (torch's)
            for small_cnn, the model's own for keras.applications trunks.
        pooling, freeze_layers: hub backbones only: "class" token or "mean"
            of the patch tokens (None: the class token where there is one);
            the patch embedding and the first `freeze_layers` transformer
            blocks do not train.

    Returns:
        A `keras.Model` named "backbone"; `model.output_shape[-1]` is the
        feature dimension (2048 for ResNet-50).

    Examples:
        >>> backbone = build_backbone("small_cnn", input_shape=(28, 28, 1))
        >>> backbone(np.zeros((2, 28, 28, 1))).shape
        TensorShape([2, 256])
    """
    if is_hub_backbone(name):
        return _hub_backbone(name, input_shape, weights, pixel_mode, batchnorm_momentum, batchnorm_epsilon,
                             pooling, freeze_layers)
    weight_file = _check_build(name, input_shape, weights, pooling, freeze_layers, width,
                               batchnorm_momentum, batchnorm_epsilon)
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = PixelNormalization(pixel_mode or default_pixel_mode(name), name="pixel_normalization")(inputs)
    trunk = _trunk(name, input_shape, weights, width, batchnorm_momentum, batchnorm_epsilon)
    model = keras.Model(inputs, trunk(x), name="backbone")
    if weight_file is not None:
        _load_weight_file(model, trunk, weight_file, name)
    if name != SMALL_CNN:
        set_batchnorm_options(model, batchnorm_momentum, batchnorm_epsilon)
    return with_frozen_batchnorm(model) if freeze_batchnorm else model


def _hub_backbone(name, input_shape, weights, pixel_mode, batchnorm_momentum, batchnorm_epsilon,
                  pooling, freeze_layers) -> keras.Model:
    """`build_backbone` of a "hub:PRESET" name, refusing the options that do not apply to it."""
    for arg, value in (("weights", weights), ("pixel_mode", pixel_mode), ("batchnorm_momentum", batchnorm_momentum),
                       ("batchnorm_epsilon", batchnorm_epsilon)):
        if value is not None:
            raise ValueError(f"build_backbone: `{arg}` does not apply to {name!r}: a KerasHub preset brings its "
                             "weights and its image converter's pixel normalisation")
    # freeze_batchnorm is a no-op: the transformers have LayerNorm only.
    return build_hub_backbone(name, tuple(input_shape), pooling=pooling, freeze_layers=freeze_layers)


def _check_build(name, input_shape, weights, pooling, freeze_layers, width, batchnorm_momentum,
                 batchnorm_epsilon) -> str | None:
    """`build_backbone`'s checks of a keras.applications or small_cnn build; returns its weights file, if any."""
    check_backbone(name, pooling, freeze_layers)
    if len(input_shape) != 3:
        raise ValueError(
            f"build_backbone: `input_shape` must be (height, width, channels), got {input_shape}"
        )
    weight_file = None
    if weights not in (None, "imagenet"):
        weight_file = os.fspath(weights)
        if not os.path.isfile(weight_file):
            raise FileNotFoundError(
                f"build_backbone: `weights` file {weight_file!r} does not exist "
                "(give None, 'imagenet' or the path of a weights file)"
            )
    if weights == "imagenet" and name == SMALL_CNN:
        raise ValueError("build_backbone: small_cnn has no ImageNet weights; use weights=None")
    if width < 1:
        raise ValueError(f"build_backbone: `width` must be >= 1, got {width}")
    _check_batchnorm_settings(batchnorm_momentum, batchnorm_epsilon, "build_backbone")
    return weight_file


def _trunk(name, input_shape, weights, width, batchnorm_momentum, batchnorm_epsilon) -> keras.Model:
    """The feature extractor after the pixel normalisation: small_cnn or a pooled keras.applications model."""
    if name == SMALL_CNN:
        return _small_cnn(
            input_shape,
            width,
            SMALL_CNN_BATCHNORM_MOMENTUM if batchnorm_momentum is None else batchnorm_momentum,
            SMALL_CNN_BATCHNORM_EPSILON if batchnorm_epsilon is None else batchnorm_epsilon,
        )
    constructor = _APPLICATIONS[name][0]
    return constructor(
        include_top=False,
        weights="imagenet" if weights == "imagenet" else None,
        input_shape=input_shape,
        pooling="avg",
    )


def set_batchnorm_options(
    model: keras.Model, momentum: float | None = None, epsilon: float | None = None
) -> int:
    """Sets momentum and/or epsilon (None: leave) on every BatchNormalization layer.

    Both are read when the layer runs, so setting them after construction
    works (before the first traced call, or recompile); `get_config` and
    saved models carry the new values. Returns the number of BN layers.
    """
    _check_batchnorm_settings(momentum, epsilon, "set_batchnorm_options")
    layers = batchnorm_layers(model)
    for layer in layers:
        if momentum is not None:
            layer.momentum = float(momentum)
        if epsilon is not None:
            layer.epsilon = float(epsilon)
    return len(layers)


def with_frozen_batchnorm(model: keras.Model) -> keras.Model:
    """A copy of a Functional/Sequential `model` whose BatchNorm statistics are frozen.

    Every `keras.layers.BatchNormalization` (nested models included) becomes
    this module's `BatchNormalization(freeze_statistics=True)` with the same
    configuration (momentum, epsilon, name, ...); every other layer is
    cloned from its config. All weights (moving statistics included) are
    copied. Cloning is the clean way in Keras 3: a layer's class cannot be
    changed in place, and `keras.models.clone_model(..., recursive=True)`
    rebuilds the nested keras.applications trunk with the replacement layers.
    """

    def clone(layer):
        if isinstance(layer, keras.layers.BatchNormalization):
            config = layer.get_config()
            config["freeze_statistics"] = True
            return BatchNormalization.from_config(config)
        return layer.__class__.from_config(layer.get_config())

    frozen = keras.models.clone_model(model, clone_function=clone, recursive=True)
    frozen.set_weights(model.get_weights())
    return frozen


def set_batchnorm_frozen(model: keras.Model, frozen: bool) -> int:
    """Freezes (or unfreezes) the statistics of BatchNorm layers in place; returns how many.

    Works on layers of this module's `BatchNormalization` (what
    `build_backbone(freeze_batchnorm=True)` and `with_frozen_batchnorm`
    make): toggles `freeze_statistics`; gamma and beta stay trainable either
    way. A plain `keras.layers.BatchNormalization` cannot be frozen in place
    without freezing gamma/beta too, so `frozen=True` on a model that has
    one raises a ValueError pointing to `with_frozen_batchnorm`; with
    `frozen=False` plain layers already update their statistics and count as
    unfrozen. Call it before the model is compiled (or recompile).
    """
    layers = batchnorm_layers(model)
    plain = [layer.name for layer in layers if not isinstance(layer, BatchNormalization)]
    if frozen and plain:
        raise ValueError(
            "set_batchnorm_frozen: layers "
            f"{', '.join(plain[:5])}{' ...' if len(plain) > 5 else ''} are plain "
            "keras.layers.BatchNormalization; use `model = with_frozen_batchnorm(model)` "
            "(or build_backbone(..., freeze_batchnorm=True)) to freeze their statistics "
            "while gamma/beta keep training"
        )
    for layer in layers:
        if isinstance(layer, BatchNormalization):
            layer.freeze_statistics = bool(frozen)
    return len(layers)


def batchnorm_layers(model) -> list:
    """Every BatchNormalization layer of `model`, nested models included, once each."""
    seen, found = set(), []
    for layer in _iter_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and id(layer) not in seen:
            seen.add(id(layer))
            found.append(layer)
    return found


def _check_batchnorm_settings(momentum, epsilon, where: str) -> None:
    if momentum is not None and not 0.0 <= momentum < 1.0:
        raise ValueError(f"{where}: `batchnorm_momentum` must be in [0, 1), got {momentum}")
    if epsilon is not None and not epsilon > 0.0:
        raise ValueError(f"{where}: `batchnorm_epsilon` must be > 0, got {epsilon}")


def _iter_layers(layer):
    for sub in getattr(layer, "layers", []):
        yield sub
        yield from _iter_layers(sub)


def _small_cnn(input_shape, width: int, momentum: float, epsilon: float) -> keras.Model:
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for block in range(4):
        filters = width * 2**block
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        # this module's BatchNormalization: the same weights, trained with TensorFlow's fused kernel
        x = BatchNormalization(freeze_statistics=False, momentum=momentum, epsilon=epsilon)(x)
        x = keras.layers.ReLU()(x)
        if block < 3:
            x = keras.layers.MaxPooling2D(2, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name="small_cnn")


def _load_weight_file(model: keras.Model, trunk: keras.Model, path: str, name: str) -> None:
    errors = []
    for target in (model, trunk):
        try:
            target.load_weights(path)
            return
        except Exception as exc:  # noqa: BLE001 - reported together below
            errors.append(f"{target.name}: {exc}")
    raise ValueError(
        f"build_backbone: weights file {path!r} does not fit backbone {name!r} "
        f"with this input shape ({'; '.join(errors)})"
    )


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
