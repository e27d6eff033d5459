"""NumPy array helpers."""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def l2_normalize(x, axis: int = -1, dtype=np.float32) -> np.ndarray:
    """`x` scaled to unit L2 norm along `axis`; all-zero rows stay zero.

    Examples:
        >>> l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
        array([[0.6, 0.8],
               [0. , 0. ]], dtype=float32)
    """
    x = np.asarray(x, dtype=dtype)
    norms = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norms, _EPS)
