"""Normalisation layers: L2 normalisation of embeddings and backbone input scaling."""

from __future__ import annotations

import keras
from keras import ops

from tfdnc.utils.arrays import L2_EPSILON, l2_normalize_tensor

# ImageNet statistics on the 0..255 scale; "caffe" mode also swaps RGB to BGR,
# as the original Caffe-trained ResNet weights in keras.applications expect.
_IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
_IMAGENET_STD_RGB = (58.393, 57.12, 57.375)

PIXEL_MODES = ("caffe", "torch", "tf", "scale", "none")


@keras.saving.register_keras_serializable(package="tfdnc")
class L2Normalize(keras.layers.Layer):
    """Scales each vector along `axis` to unit Euclidean norm (`tfdnc.utils.arrays.l2_normalize_tensor`).

    Args:
        axis: axis to normalise over.
        epsilon: floor on the squared norm, so an all-zero vector maps to zeros
            instead of NaN.

    Examples:
        >>> layer = L2Normalize()
        >>> np.asarray(layer(np.array([[3.0, 4.0]])), "float64").round(3).tolist()
        [[0.6, 0.8]]
    """

    def __init__(self, axis: int = -1, epsilon: float = L2_EPSILON, **kwargs):
        super().__init__(**kwargs)
        if epsilon <= 0:
            raise ValueError(f"L2Normalize: `epsilon` must be > 0, got {epsilon}")
        self.axis = axis
        self.epsilon = epsilon
        self.supports_masking = True

    def call(self, inputs):
        return l2_normalize_tensor(inputs, axis=self.axis, epsilon=self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="tfdnc")
class PixelNormalization(keras.layers.Layer):
    """Maps images with pixel values in [0, 255] to what a backbone expects.

    Keeping this inside the model (rather than in the input pipeline) means a
    saved model or SavedModel takes plain 0..255 pixels, so training,
    evaluation and serving cannot disagree about preprocessing.

    Args:
        mode: "caffe" (RGB->BGR, subtract ImageNet mean; keras.applications
            ResNet/VGG weights), "torch" (ImageNet mean/std, the papers'
            normalisation), "tf" (to [-1, 1]), "scale" (to [0, 1]), "none".

    Examples:
        >>> layer = PixelNormalization("torch")
        >>> y = layer(np.full((1, 4, 4, 3), 255.0))
    """

    def __init__(self, mode: str = "torch", **kwargs):
        super().__init__(**kwargs)
        if mode not in PIXEL_MODES:
            raise ValueError(
                f"PixelNormalization: `mode` must be one of {PIXEL_MODES}, got {mode!r}"
            )
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "none":
            return x
        if self.mode == "scale":
            return x / 255.0
        if self.mode == "tf":
            return x / 127.5 - 1.0
        channels = x.shape[-1]
        if channels != 3:
            # Grey images: use the channel-averaged statistics.
            mean = sum(_IMAGENET_MEAN_RGB) / 3.0
            std = sum(_IMAGENET_STD_RGB) / 3.0
            return (x - mean) / std if self.mode == "torch" else x - mean
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_IMAGENET_MEAN_RGB, dtype=x.dtype)
            std = ops.convert_to_tensor(_IMAGENET_STD_RGB, dtype=x.dtype)
            return (x - mean) / std
        mean_bgr = ops.convert_to_tensor(_IMAGENET_MEAN_RGB[::-1], dtype=x.dtype)
        return ops.flip(x, axis=-1) - mean_bgr

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
