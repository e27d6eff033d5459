"""k-means on all points, on faiss (default) or scikit-learn (`kmeans`; its docstring has an example)."""

from __future__ import annotations

import warnings

import numpy as np

from tfdnc.clustering.validation import check_features, check_k
from tfdnc.utils import l2_normalize

BACKENDS = ("auto", "faiss", "sklearn")

# Why faiss could not be imported (for the fallback warning), and whether
# that warning was shown: once per process, not once per k-means call.
_faiss_import_error: str | None = None
_fallback_warned = False


def _faiss():
    """The faiss module, or None when it cannot be imported."""
    global _faiss_import_error
    try:
        import faiss
    except ImportError as exc:  # faiss-cpu is a dependency; sklearn is the fallback
        _faiss_import_error = str(exc) or type(exc).__name__
        return None
    return faiss


def _warn_sklearn_fallback():
    """Says once per process that backend="auto" k-means runs on scikit-learn."""
    global _fallback_warned
    if _fallback_warned:
        return
    _fallback_warned = True
    reason = f" ({_faiss_import_error})" if _faiss_import_error else ""
    warnings.warn(
        f"[tfdnc] faiss cannot be imported{reason}; k-means (re-clustering, NMI / F1) falls back "
        "to scikit-learn, which is slower on large sets. `pip install faiss-cpu` to use faiss "
        "(this warning is shown once per process).",
        RuntimeWarning,
        stacklevel=3,
    )


def kmeans(
    features: np.ndarray,
    k: int,
    *,
    niter: int = 100,
    seed: int = 0,
    spherical: bool = False,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """k-means on all points (no subsampling); deterministic for a seed.

    Args:
        features: (N, D) float array.
        k: number of clusters, 1 <= k <= N.
        niter: Lloyd iterations.
        seed: random seed of the initialisation.
        spherical: cosine k-means: rows are L2-normalised first and the
            centroids are kept on the unit sphere.
        backend: "auto" (default: faiss when importable, else scikit-learn,
            with a `RuntimeWarning` once per process), "faiss" (an error
            without it) or "sklearn".

    Returns:
        (assignments int64 (N,), centroids float32 (k, D)); every point is
        assigned to its nearest returned centroid (largest inner product when
        spherical).

    Examples:

        >>> rng = np.random.default_rng(0)
        >>> x = np.r_[np.zeros((5, 2)), np.ones((5, 2))] + 0.01 * rng.normal(size=(10, 2))
        >>> a, c = kmeans(x, 2)
        >>> len(set(a[:5])), len(set(a[5:])), bool(a[0] != a[5])
        (1, 1, True)
    """
    x = check_features(features)
    n, d = x.shape
    k = check_k(k, n)
    if int(niter) < 1:
        raise ValueError(f"`niter` must be >= 1, got {niter}")
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}")
    if spherical:
        x = l2_normalize(x)
    faiss = _faiss() if backend in ("auto", "faiss") else None
    if backend == "faiss" and faiss is None:
        raise ValueError("`backend='faiss'` but faiss is not installed (pip install faiss-cpu)")
    if backend == "auto" and faiss is None:
        _warn_sklearn_fallback()
    if faiss is not None:
        return _kmeans_faiss(faiss, x, k, int(niter), int(seed), bool(spherical))
    return _kmeans_sklearn(x, k, int(niter), int(seed), bool(spherical))


def _kmeans_faiss(faiss, x, k, niter, seed, spherical):
    n, d = x.shape
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        seed=seed,
        spherical=spherical,
        # faiss trains on at most 256 points per centroid by default and
        # silently subsamples the rest; the method clusters every image.
        max_points_per_centroid=max(256, -(-n // k) + 1),
        # ... and warns below 39 points per centroid; tiny test sets are fine.
        min_points_per_centroid=1,
        verbose=False,
    )
    km.train(x)
    _, idx = km.index.search(x, 1)
    return idx[:, 0].astype(np.int64), np.asarray(km.centroids, dtype=np.float32).reshape(k, d)


def _kmeans_sklearn(x, k, niter, seed, spherical):
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=1, max_iter=niter, random_state=seed, algorithm="lloyd")
    km.fit(x)
    centroids = km.cluster_centers_.astype(np.float32)
    if spherical:
        # Lloyd on unit vectors; projecting the means back onto the sphere
        # and assigning by inner product makes the result a cosine clustering.
        centroids = l2_normalize(centroids)
        return np.argmax(x @ centroids.T, axis=1).astype(np.int64), centroids
    return km.predict(x).astype(np.int64), centroids

