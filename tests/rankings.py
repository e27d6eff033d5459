"""Comparing a top-k answer with a NumPy reference without deciding float ties.

Two scores closer than float32 round-off may come out in either order from
another CPU's kernels (AVX2 against AVX-512, BLAS against Faiss's own SIMD),
so comparing returned indices with `np.argsort` of a float64 reference can
flip on another machine. `assert_top_k` checks what a top k means instead:
position p holds an item whose reference score is within `atol` of the p-th
best, and no item twice. A wrong item (a neighbour off by one, the wrong
normalisation, a missed exclusion) scores far from the p-th best and fails.
"""

from __future__ import annotations

import numpy as np


def assert_top_k(got, scores, *, atol: float = 1e-5, higher_is_better: bool = True) -> None:
    """`got` (Q, k) indices into the columns of `scores` (Q, N): each row a best-first top k, up to ties.

    Columns that must not be returned (excluded items) score -inf (+inf for
    distances) in `scores`.
    """
    got = np.asarray(got)
    scores = np.asarray(scores, np.float64)
    if not higher_is_better:
        scores = -scores
    assert got.ndim == 2 and got.shape[0] == scores.shape[0], (got.shape, scores.shape)
    k = got.shape[1]
    best = -np.sort(-scores, axis=1)[:, :k]
    for q in range(len(got)):
        assert len(set(got[q].tolist())) == k, f"row {q}: an item returned twice: {got[q]}"
        assert np.all((got[q] >= 0) & (got[q] < scores.shape[1])), f"row {q}: index out of range: {got[q]}"
        mine = scores[q, got[q]]
        off = ~(np.abs(mine - best[q]) <= atol)  # also catches an excluded item (-inf)
        assert not off.any(), (
            f"row {q}: positions {np.flatnonzero(off).tolist()} hold {got[q][off].tolist()} scoring "
            f"{mine[off].tolist()}, the best there score {best[q][off].tolist()}")
