"""Argument checks shared by the clustering functions: one clear line naming the argument at fault."""

from __future__ import annotations

import numpy as np


class ClusteringError(ValueError):
    """A clustering request that cannot be satisfied (impossible K, failed constraint)."""


def check_features(features, name: str = "features") -> np.ndarray:
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D array (N, D), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"`{name}` must be non-empty, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x).all(axis=1)).sum())
        raise ValueError(f"`{name}` contains NaN or infinite values in {bad} rows")
    return x


def check_labels(labels, n: int, name: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"`{name}` must have shape ({n},) to match the features, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"`{name}` must hold integer class ids, got dtype {y.dtype}")
    return y


def check_assignments(assignments, k: int, n: int | None = None, name: str = "assignments") -> np.ndarray:
    a = np.asarray(assignments)
    if a.ndim != 1 or (n is not None and a.shape[0] != n):
        want = f"({n},)" if n is not None else "(N,)"
        raise ValueError(f"`{name}` must have shape {want}, got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"`{name}` must hold integer cluster ids, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= k):
        raise ValueError(f"`{name}` must hold cluster ids in [0, {k}), got range [{a.min()}, {a.max()}]")
    return a.astype(np.int64, copy=False)


def check_k(k, n: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"`{name}` must be an int, got {k!r}")
    if k < 1:
        raise ValueError(f"`{name}` must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"`{name}` ({k}) cannot exceed the number of points ({n})")
    return int(k)

