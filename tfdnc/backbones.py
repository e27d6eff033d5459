"""Backbones: image -> pooled feature vector (the "penultimate" features).

Every backbone built here is a Keras model taking images with pixel values in
[0, 255] (any float dtype) and returning globally pooled features. The pixel
normalisation the backbone's weights expect is the first layer of the model,
so callers never preprocess by hand.
"""

from __future__ import annotations

import os
from typing import Callable

import keras

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


def default_pixel_mode(name: str) -> str:
    """The pixel normalisation a backbone's pretrained weights expect."""
    _check_name(name)
    return "scale" if name == SMALL_CNN else _APPLICATIONS[name][1]


def build_backbone(
    name: str = "resnet50",
    input_shape: tuple[int, int, int] = (224, 224, 3),
    weights: str | None = None,
    freeze_batchnorm: bool = False,
    pixel_mode: str | None = None,
    width: int = 32,
) -> keras.Model:
    """Builds a backbone that maps [0, 255] images to pooled features.

    Args:
        name: one of `BACKBONES`: a `keras.applications` model or "small_cnn",
            a four-block CNN for tiny images (MNIST-sized).
        input_shape: (height, width, channels); `None` sides are allowed.
        weights: None (random init), "imagenet" (downloaded by Keras on first
            use), or the path of a weights file: either one written by
            `backbone.save_weights` (e.g. by `tfdnc.pretrain`) or a
            keras.applications no-top weights file for the named model.
        freeze_batchnorm: keep every BatchNormalization layer in inference
            mode with fixed statistics, as the papers do for ResNet-50.
        pixel_mode: override the pixel normalisation (see
            `PixelNormalization`); default: what `weights` expects.
        width: channels of the first small_cnn block (doubles each block).

    Returns:
        A `keras.Model` named "backbone"; `model.output_shape[-1]` is the
        feature dimension (2048 for ResNet-50).

    Example:
    >>> backbone = build_backbone("small_cnn", input_shape=(28, 28, 1))
    >>> features = backbone(np.zeros((2, 28, 28, 1)))  # shape (2, 256)
    """
    _check_name(name)
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
    mode = pixel_mode or default_pixel_mode(name)

    inputs = keras.Input(shape=input_shape, name="pixels")
    x = PixelNormalization(mode, name="pixel_normalization")(inputs)
    if name == SMALL_CNN:
        trunk = _small_cnn(input_shape, width)
    else:
        constructor = _APPLICATIONS[name][0]
        trunk = constructor(
            include_top=False,
            weights="imagenet" if weights == "imagenet" else None,
            input_shape=input_shape,
            pooling="avg",
        )
    features = trunk(x)
    model = keras.Model(inputs, features, name="backbone")
    if weight_file is not None:
        _load_weight_file(model, trunk, weight_file, name)
    if freeze_batchnorm:
        set_batchnorm_frozen(model, True)
    return model


def set_batchnorm_frozen(model: keras.Model, frozen: bool) -> int:
    """Freezes (or unfreezes) every BatchNormalization layer; returns how many."""
    count = 0
    for layer in _iter_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            # Keras 3 runs a non-trainable BatchNormalization in inference mode,
            # so its moving statistics stay fixed too.
            layer.trainable = not frozen
            count += 1
    return count


def _iter_layers(layer):
    for sub in getattr(layer, "layers", []):
        yield sub
        yield from _iter_layers(sub)


def _small_cnn(input_shape, width: int) -> keras.Model:
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for block in range(4):
        filters = width * 2**block
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
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
