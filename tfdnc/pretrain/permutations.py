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


SELECTIONS = ("max_min", "max_mean")


def generate_permutations(
    num_permutations: int,
    num_items: int = 9,
    seed: int = 0,
    num_candidates: int | None = None,
    selection: str = "max_min",
) -> np.ndarray:
    """Chooses a set of permutations that are far apart in Hamming distance.

    Both selections are greedy: start from a random candidate, then add one
    candidate at a time.

    - `"max_min"` (the default; tfdnc's own rule, farthest-point selection):
      add the candidate whose *minimum* Hamming distance to the chosen set
      is largest, ties broken at random. It keeps the smallest distance
      large (N = 100 of 9 items: 6; N = 1000: 5) at about the mean distance
      of `"max_mean"`.
    - `"max_mean"` (the authors' rule: Noroozi & Favaro 2016, Algorithm 1,
      and Brattoli's `select_permutations.py --selection max`): add the
      candidate whose *mean* Hamming distance to the chosen set is largest,
      the first one in candidate order on ties (bbrattoli/JigsawPuzzlePytorch:
      select_permutations.py:35-38, the mean distance of every remaining
      candidate to the set and its argmax; the random start is line 29).
      Its mean distance is usually the larger one (9 items, N = 100: 8.08
      against 8.07), but its minimum can be small: 2 (two classes one swap
      of two tiles apart) for 9 items and N = 10 to 1000.

    Far-apart permutations make the classes of the pretext task
    distinguishable only by reasoning about the whole layout, not a single
    misplaced tile.

    Args:
        num_permutations: size N of the set.
        num_items: number of items permuted (9 for a 3 x 3 jigsaw, T for T
            frames).
        seed: seed of the random start (and of the tie breaking of
            `"max_min"`); the same seed gives the same set.
        num_candidates: choose among this many random distinct candidate
            permutations instead of all `num_items!` (needed above 9 items).
        selection: `"max_min"` or `"max_mean"`, see above.

    Returns:
        int32 array of shape (N, num_items), rows distinct, in the order
        chosen.

    Examples:
        >>> perms = generate_permutations(100, 9)
        >>> min_hamming_distance(perms)
        6
        >>> authors = generate_permutations(100, 9, selection="max_mean")
        >>> mean_hamming_distance(authors) >= mean_hamming_distance(perms)
        True
    """
    _check_selection_size(num_permutations, num_items, selection)
    rng = np.random.default_rng(seed)
    candidates = _candidates(num_items, num_candidates, num_permutations, rng)
    first = int(rng.integers(len(candidates)))
    pick_all = _pick_max_min if selection == "max_min" else _pick_max_mean
    chosen = pick_all(candidates, first, num_permutations, rng)
    return candidates[chosen].astype(np.int32)


def _check_selection_size(num_permutations: int, num_items: int, selection: str) -> None:
    if selection not in SELECTIONS:
        raise ValueError(f"generate_permutations: `selection` must be one of {SELECTIONS}, got {selection!r}")
    if num_items < 2:
        raise ValueError(f"generate_permutations: `num_items` must be >= 2, got {num_items}")
    total = math.factorial(num_items)
    if not 1 <= num_permutations <= total:
        raise ValueError(
            f"generate_permutations: `num_permutations` must be in [1, {total}] "
            f"for {num_items} items, got {num_permutations}"
        )


def _hamming_to(candidates: np.ndarray, row: int) -> np.ndarray:
    """Hamming distance of every candidate to candidate `row`."""
    return np.count_nonzero(candidates != candidates[row], axis=1)


def _pick_max_min(candidates: np.ndarray, first: int, count: int, rng: np.random.Generator) -> list[int]:
    """`"max_min"`: the candidate farthest (by minimum distance) from the chosen set, ties at random."""
    chosen = [first]
    dist = _hamming_to(candidates, first).astype(np.int64)  # minimum distance to the chosen set
    for _ in range(count - 1):
        best = np.flatnonzero(dist == dist.max())
        pick = int(best[rng.integers(len(best))])
        chosen.append(pick)
        np.minimum(dist, _hamming_to(candidates, pick), out=dist)
    return chosen


def _pick_max_mean(candidates: np.ndarray, first: int, count: int, rng: np.random.Generator) -> list[int]:
    """`"max_mean"`: the candidate farthest (by mean distance) from the chosen set, the first on ties.

    The sum of distances ranks like the mean (the set size is the same for
    all candidates); `rng` is unused (the authors' rule breaks no tie at random).
    """
    chosen = [first]
    dist = _hamming_to(candidates, first).astype(np.int64)
    taken = np.zeros(len(candidates), dtype=bool)
    taken[first] = True
    for _ in range(count - 1):
        # chosen rows are out of the running (the reference deletes them)
        pick = int(np.argmax(np.where(taken, -1, dist)))
        chosen.append(pick)
        taken[pick] = True
        dist += _hamming_to(candidates, pick)
    return chosen


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


def mean_hamming_distance(perms: np.ndarray) -> float:
    """Mean Hamming distance over the pairs of distinct rows of `perms`."""
    dist = hamming_distances(perms)
    if len(dist) < 2:
        raise ValueError("mean_hamming_distance: need at least 2 permutations")
    return float(dist[np.triu_indices(len(dist), 1)].mean())


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
