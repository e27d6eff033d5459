"""Permutation sets for ordering pretext tasks (jigsaw tiles, video frames).

Conventions used throughout `tfdnc.pretrain`: a permutation `perm` of
`n` items is an int array with `shuffled[i] = items[perm[i]]`, i.e. position
`i` of the shuffled sequence shows item `perm[i]`. Its inverse `inv`
(`inv[perm[i]] = i`) undoes it: `items = shuffled[inv]`.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

# Enumerating every permutation is cheap up to 9 items (362,880 rows);
# beyond that candidates are drawn at random.
_MAX_ENUMERATED_ITEMS = 9


def generate_permutations(
    num_permutations: int,
    num_items: int = 9,
    seed: int = 0,
    num_candidates: int | None = None,
) -> np.ndarray:
    """Chooses a set of permutations that are far apart in Hamming distance.

    Greedy farthest-point selection (the "maximal" set of Noroozi & Favaro,
    2016): start from a random permutation, then repeatedly add the candidate
    whose minimum Hamming distance to the chosen set is largest (ties broken
    at random). Far-apart permutations make the classes of the pretext task
    distinguishable only by reasoning about the whole layout, not a single
    misplaced tile.

    Args:
        num_permutations: size N of the set.
        num_items: number of items permuted (9 for a 3 x 3 jigsaw, T for T
            frames).
        seed: seed of the random start and tie breaking.
        num_candidates: choose among this many random distinct candidate
            permutations instead of all `num_items!` (needed above 9 items).

    Returns:
        int32 array of shape (N, num_items), rows distinct.

    Example:
    >>> perms = generate_permutations(100, 9)
    >>> min_hamming_distance(perms)  # 6 for this size
    """
    if num_items < 2:
        raise ValueError(f"generate_permutations: `num_items` must be >= 2, got {num_items}")
    total = math.factorial(num_items)
    if not 1 <= num_permutations <= total:
        raise ValueError(
            f"generate_permutations: `num_permutations` must be in [1, {total}] "
            f"for {num_items} items, got {num_permutations}"
        )
    rng = np.random.default_rng(seed)
    candidates = _candidates(num_items, num_candidates, num_permutations, rng)
    chosen = [int(rng.integers(len(candidates)))]
    # Minimum distance of every candidate to the chosen set, updated per pick.
    min_dist = np.count_nonzero(candidates != candidates[chosen[0]], axis=1)
    for _ in range(num_permutations - 1):
        best = np.flatnonzero(min_dist == min_dist.max())
        pick = int(best[rng.integers(len(best))])
        chosen.append(pick)
        np.minimum(min_dist, np.count_nonzero(candidates != candidates[pick], axis=1), out=min_dist)
    return candidates[chosen].astype(np.int32)


def _candidates(num_items, num_candidates, num_permutations, rng) -> np.ndarray:
    if num_candidates is None:
        if num_items > _MAX_ENUMERATED_ITEMS:
            raise ValueError(
                f"generate_permutations: {num_items}! permutations are too many to enumerate; "
                "pass `num_candidates`"
            )
        return np.array(list(itertools.permutations(range(num_items))), dtype=np.int8)
    if num_candidates < num_permutations:
        raise ValueError(
            f"generate_permutations: `num_candidates` ({num_candidates}) must be >= "
            f"`num_permutations` ({num_permutations})"
        )
    rows = {tuple(rng.permutation(num_items)) for _ in range(num_candidates)}
    while len(rows) < num_candidates and len(rows) < math.factorial(num_items):
        rows.add(tuple(rng.permutation(num_items)))
    return np.array(sorted(rows), dtype=np.int16)


def hamming_distances(perms: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances (number of differing positions), (N, N)."""
    perms = np.asarray(perms)
    return np.count_nonzero(perms[:, None, :] != perms[None, :, :], axis=-1)


def min_hamming_distance(perms: np.ndarray) -> int:
    """Smallest Hamming distance between two distinct rows of `perms`."""
    dist = hamming_distances(perms)
    if len(dist) < 2:
        raise ValueError("min_hamming_distance: need at least 2 permutations")
    np.fill_diagonal(dist, np.iinfo(dist.dtype).max)
    return int(dist.min())


def inverse_permutations(perms: np.ndarray) -> np.ndarray:
    """Row-wise inverses: `inv[..., perm[..., i]] = i`."""
    perms = np.asarray(perms)
    return np.argsort(perms, axis=-1).astype(perms.dtype)


def validate_permutations(perms: np.ndarray, name: str = "permutations") -> np.ndarray:
    """Checks that `perms` is an (N, n) array of distinct permutations of 0..n-1."""
    perms = np.asarray(perms)
    if perms.ndim != 2 or perms.shape[0] < 1 or perms.shape[1] < 2:
        raise ValueError(f"{name}: expected an (N, n) int array with n >= 2, got shape {perms.shape}")
    if not np.issubdtype(perms.dtype, np.integer):
        raise ValueError(f"{name}: expected integers, got dtype {perms.dtype}")
    if not (np.sort(perms, axis=1) == np.arange(perms.shape[1])).all():
        raise ValueError(f"{name}: every row must be a permutation of 0..{perms.shape[1] - 1}")
    if len(np.unique(perms, axis=0)) != len(perms):
        raise ValueError(f"{name}: rows must be distinct")
    return perms.astype(np.int32)
