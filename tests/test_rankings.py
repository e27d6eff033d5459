"""The tie-tolerant top-k check of tests/rankings.py passes near-ties either way and fails wrong answers."""

import numpy as np
import pytest

from rankings import assert_top_k  # tests/rankings.py


def test_near_ties_pass_in_either_order_and_wrong_answers_fail():
    scores = np.array([[0.9, 0.5, 0.5 + 1e-7, 0.1, -np.inf]])  # items 1 and 2 tie within float32 round-off
    assert_top_k([[0, 2, 1]], scores)
    assert_top_k([[0, 1, 2]], scores)
    for wrong in ([[1, 0, 2]],  # a clear pair swapped
                  [[0, 1, 3]],  # the fourth best in the third place
                  [[0, 4, 1]],  # an excluded item
                  [[0, 1, 1]],  # an item twice
                  [[0, 1, 5]]):  # out of range
        with pytest.raises(AssertionError):
            assert_top_k(wrong, scores)
    assert_top_k([[0, 1]], -scores[:, :4], higher_is_better=False)  # distances: smallest first
    with pytest.raises(AssertionError):
        assert_top_k([[3, 1]], -scores[:, :4], higher_is_better=False)
