"""Array helpers, and tfdnc's one L2 normalisation (NumPy, and its Keras twin for graphs).

Every unit-norm embedding in tfdnc goes through one formula,

    x / sqrt(max(sum(x ** 2, axis), epsilon))      epsilon = L2_EPSILON = 1e-12

(`epsilon` floors the squared norm, as `tf.math.l2_normalize` does, so an
all-zero vector maps to zeros instead of NaN): `l2_normalize` on NumPy arrays
(evaluation, clustering, indexes, galleries) and `l2_normalize_tensor` on
tensors (the `tfdnc.layers.L2Normalize` layer, masks, losses). Keras is
imported only inside `l2_normalize_tensor`, so this module stays free of
TensorFlow like the rest of `tfdnc.utils`.
"""

from __future__ import annotations

import numpy as np

L2_EPSILON = 1e-12


def l2_normalize(x, axis: int = -1, dtype=np.float32, epsilon: float = L2_EPSILON) -> np.ndarray:
    """`x` (as `dtype`) scaled to unit L2 norm along `axis`; all-zero rows stay zero.

    The NumPy side of the formula in this module's docstring. The squared
    norms come from `einsum`, which makes no copy of `x` the size of `x`
    (1,000,000 x 512 features: 2 GB saved while re-clustering).

    Examples:
        >>> l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
        array([[0.6, 0.8],
               [0. , 0. ]], dtype=float32)
    """
    x = np.asarray(x, dtype=dtype)
    rows = np.moveaxis(x, axis, -1)
    square_sum = np.expand_dims(np.einsum("...i,...i->...", rows, rows), axis)
    return x / np.sqrt(np.maximum(square_sum, epsilon))


def l2_normalize_tensor(x, axis: int = -1, epsilon: float = L2_EPSILON):
    """The tensor side of the formula in this module's docstring (`keras.ops`: usable in graphs and losses).

    Examples:
        >>> y = l2_normalize_tensor(tf.constant([[3.0, 4.0]]))  # [[0.6, 0.8]]
    """
    from keras import ops  # here, not at the top: tfdnc.utils imports no TensorFlow

    square_sum = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(square_sum, epsilon))
