"""Learner identity across a re-clustering: Hungarian matching of new clusters to old ones.

Example:

```python
ids = match_clusters(assignments, previous, k_new=8, k_old=8)
assignments = ids[assignments]          # new cluster i takes old id ids[i]
```
"""

from __future__ import annotations

import numpy as np

from tfdnc.clustering.validation import check_assignments


def matching_cost(new_assignments, old_assignments, k_new: int, k_old: int) -> np.ndarray:
    """(k_new, k_old) sizes of the symmetric differences of the member sets.

    |A_i ^ B_j| = |A_i| + |B_j| - 2 |A_i & B_j|, with the intersections read
    off a contingency table: O(N + k_new * k_old), not O(N) Python sets.
    """
    new = check_assignments(new_assignments, k_new, name="new_assignments")
    old = check_assignments(old_assignments, k_old, new.shape[0], name="old_assignments")
    inter = np.bincount(new * k_old + old, minlength=k_new * k_old).reshape(k_new, k_old)
    return inter.sum(1)[:, None] + inter.sum(0)[None, :] - 2 * inter


def match_clusters(new_assignments, old_assignments, k_new: int, k_old: int | None = None) -> np.ndarray:
    """Ids that keep learner identity across a re-clustering (Hungarian matching).

    New cluster i takes old id `mapping[i]`, chosen to minimise the total
    symmetric difference of member sets (`scipy.optimize.linear_sum_assignment`).
    When `k_new > k_old` the unmatched new clusters take the free ids
    `k_old .. k_new - 1` in order; `k_new < k_old` is refused because the
    ids must stay in [0, k_new).

    Returns:
        int64 (k_new,) permutation of range(k_new); relabel with `mapping[new_assignments]`.

    Examples:
        >>> old = np.array([0, 0, 1, 1, 2, 2])
        >>> match_clusters(np.array([2, 2, 0, 0, 1, 1]), old, 3, 3)
        array([1, 2, 0])
    """
    from scipy.optimize import linear_sum_assignment

    k_old = k_new if k_old is None else k_old
    if k_new < k_old:
        raise ValueError(
            f"match_clusters: `k_new` ({k_new}) < `k_old` ({k_old}): ids must stay in [0, k_new); "
            "after a split, children 2c and 2c+1 inherit cluster c instead"
        )
    cost = matching_cost(new_assignments, old_assignments, k_new, k_old)
    rows, cols = linear_sum_assignment(cost)
    mapping = np.full(k_new, -1, dtype=np.int64)
    mapping[rows] = cols
    unmatched = mapping < 0
    mapping[unmatched] = np.arange(k_old, k_new)
    return mapping
