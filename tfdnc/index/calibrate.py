"""Choosing the match threshold: the similarity that meets a target F1, precision or recall.

As tensorflow-similarity's `calibrate` does: every labelled validation image
queries the index, its nearest hit is a true match when the labels agree,
and a query "matches" when that hit's similarity is at or above the
threshold. At each candidate threshold (each distinct similarity):

- precision = correct matches / matches,
- recall = correct matches / queries whose nearest hit is correct,
- F1 = their harmonic mean.

`threshold_curve` gives the whole curve; `calibrate_threshold` picks a point
of it for a target.
"""

from __future__ import annotations

import numpy as np

METRICS = ("precision", "recall", "f1")


def threshold_curve(similarities, correct) -> dict:
    """Precision, recall, F1 and matches at every distinct similarity, highest threshold first.

    Args:
        similarities: (N,) similarity of each validation query's nearest hit.
        correct: (N,) whether that hit has the query's label.

    Returns:
        {"threshold", "precision", "recall", "f1", "matched"}: (T,) arrays,
        one entry per distinct similarity, in decreasing threshold order.

    Examples:
        >>> threshold_curve([0.9, 0.8, 0.3], [True, True, False])["precision"]
        array([1.        , 1.        , 0.66666667])
    """
    s = np.asarray(similarities, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if s.ndim != 1 or s.shape != ok.shape or s.size == 0:
        raise ValueError(f"calibrate: need one similarity per `correct` flag, got shapes {s.shape}, {ok.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("calibrate: `similarities` holds NaN or infinite values (queries without a hit?)")
    order = np.argsort(-s, kind="stable")
    s, ok = s[order], ok[order]
    # At each distinct similarity the queries at or above it are the prefix
    # ending at its last occurrence.
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    hits = np.cumsum(ok)[last].astype(np.float64)
    matched = last + 1
    precision = hits / matched
    recall = hits / max(int(ok.sum()), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"threshold": s[last], "precision": precision, "recall": recall, "f1": f1, "matched": matched}


def calibrate_threshold(similarities, correct, target: float | None = 0.95, metric: str = "precision") -> dict:
    """The threshold meeting `target` for `metric` on (similarity, correct) pairs.

    Args:
        similarities: (N,) similarity of each validation query's nearest hit.
        correct: (N,) whether that hit has the query's label.
        target: in (0, 1]; None: the threshold where `metric` is highest
            (for F1, tensorflow-similarity's "optimal" cutpoint).
        metric: "precision" (the lowest threshold keeping the precision:
            the most queries answered), "recall" (the highest threshold
            keeping the recall: the fewest wrong matches) or "f1" (the
            threshold with the best F1, which must reach the target).

    Returns:
        {"threshold", "precision", "recall", "f1", "matched", "queries",
         "metric", "target", "curve"} (`curve`: `threshold_curve` as lists);
        with metric "precision" also "target_precision", as before.

    Raises:
        ValueError: when no threshold reaches the target (the message gives
            the best value there is).

    Examples:
        >>> calibrate_threshold([0.9, 0.8, 0.3], [True, True, False], 0.99)["threshold"]
        0.8
        >>> calibrate_threshold([0.9, 0.8, 0.3], [True, False, True], None, metric="f1")["threshold"]
        0.3
    """
    if metric not in METRICS:
        raise ValueError(f"calibrate: `metric` must be one of {METRICS}, got {metric!r}")
    if target is not None and not 0.0 < float(target) <= 1.0:
        raise ValueError(f"calibrate: the target {metric} must be in (0, 1], got {target}")
    curve = threshold_curve(similarities, correct)
    best = _best_point(curve, metric, target)
    result = {
        "threshold": float(curve["threshold"][best]),
        "precision": float(curve["precision"][best]),
        "recall": float(curve["recall"][best]),
        "f1": float(curve["f1"][best]),
        "matched": int(curve["matched"][best]),
        "queries": int(curve["matched"][-1]),
        "metric": metric,
        "target": None if target is None else float(target),
        "curve": {name: values_.tolist() for name, values_ in curve.items()},
    }
    if metric == "precision":
        result["target_precision"] = result["target"]
    return result


def _best_point(curve: dict, metric: str, target: float | None) -> int:
    """Index into `curve` of the threshold `calibrate_threshold` picks (see there); ValueError if none reaches."""
    values = curve[metric]
    if target is None:
        # Ties keep the lowest threshold (the most queries answered).
        return int(np.flatnonzero(values >= values.max() - 1e-12)[-1])
    reaching = np.flatnonzero(values >= float(target) - 1e-12)
    if reaching.size == 0:
        top = int(values.argmax())
        raise ValueError(
            f"calibrate: no threshold reaches {metric} {target} on {curve['matched'][-1]} "
            f"validation queries (the best is {values[top]:.4f} at similarity {curve['threshold'][top]:.4f}); "
            "lower the target or use a better model"
        )
    if metric == "precision":
        return int(reaching[-1])  # the lowest threshold: the most queries answered
    if metric == "recall":
        return int(reaching[0])  # the highest threshold: the fewest wrong matches
    return int(reaching[np.flatnonzero(values[reaching] >= values[reaching].max() - 1e-12)[-1]])
