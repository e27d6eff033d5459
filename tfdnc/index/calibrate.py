"""Choosing the match threshold: the lowest similarity that keeps a target precision.

As tensorflow-similarity's `calibrate` does: every labelled validation image
queries the index, its nearest hit is a true match when the labels agree, and
the threshold is the smallest similarity at which the nearest hits at or
above it are correct with at least the target precision. Lower thresholds
would answer more queries; this is the lowest one that still keeps the
precision.
"""

from __future__ import annotations

import numpy as np


def calibrate_threshold(similarities, correct, target_precision: float) -> dict:
    """The threshold reaching `target_precision` on (similarity, correct) pairs.

    Args:
        similarities: (N,) similarity of each validation query's nearest hit.
        correct: (N,) whether that hit has the query's label.
        target_precision: in (0, 1].

    Returns:
        {"threshold", "precision", "recall", "matched", "queries",
         "target_precision"}: precision among queries at or above the
        threshold, recall = correct matches / all correct nearest hits,
        matched = queries at or above it.

    Raises:
        ValueError: when no threshold reaches the target (the message gives
            the best precision there is).

    Example:
    >>> calibrate_threshold([0.9, 0.8, 0.3], [True, True, False], 0.99)["threshold"]
    0.8
    """
    s = np.asarray(similarities, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if s.ndim != 1 or s.shape != ok.shape or s.size == 0:
        raise ValueError(f"calibrate: need one similarity per `correct` flag, got shapes {s.shape}, {ok.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("calibrate: `similarities` holds NaN or infinite values (queries without a hit?)")
    if not 0.0 < float(target_precision) <= 1.0:
        raise ValueError(f"calibrate: `target_precision` must be in (0, 1], got {target_precision}")
    order = np.argsort(-s, kind="stable")
    s, ok = s[order], ok[order]
    # Candidate thresholds are the distinct similarities; at each, the queries
    # at or above it are the prefix ending at its last occurrence.
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    hits = np.cumsum(ok)[last]
    precision = hits / (last + 1)
    reaching = np.flatnonzero(precision >= float(target_precision) - 1e-12)
    if reaching.size == 0:
        raise ValueError(
            f"calibrate: no threshold reaches precision {target_precision} on {s.size} validation "
            f"queries (the best is {precision.max():.4f} at similarity {s[last[precision.argmax()]]:.4f}); "
            "lower the target or use a better model"
        )
    best = reaching[-1]  # the lowest threshold: the most queries answered
    total_correct = max(int(ok.sum()), 1)
    return {
        "threshold": float(s[last[best]]),
        "precision": float(precision[best]),
        "recall": float(hits[best] / total_correct),
        "matched": int(last[best] + 1),
        "queries": int(s.size),
        "target_precision": float(target_precision),
    }
