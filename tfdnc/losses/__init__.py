"""Metric-learning losses.

Every loss is a :class:`MetricLoss` (a `keras.losses.Loss`): `loss(labels,
embeddings)` returns a scalar, `loss.compute_loss_and_stats(labels,
embeddings)` also returns statistics (at least "active_fraction").

Example:
>>> loss = get_loss("margin", beta=1.2)
>>> loss = get_loss("triplet", mining="semi_hard", symmetrical=True)
"""

from __future__ import annotations

from tfdnc.losses.angular import AngularLoss
from tfdnc.losses.base import MetricLoss
from tfdnc.losses.contrastive import ContrastiveLoss
from tfdnc.losses.lifted import LiftedStructureLoss
from tfdnc.losses.margin import MarginLoss
from tfdnc.losses.multi_similarity import MultiSimilarityLoss
from tfdnc.losses.npair import NPairLoss
from tfdnc.losses.triplet import TripletLoss

LOSSES: dict[str, type[MetricLoss]] = {
    "margin": MarginLoss,
    "triplet": TripletLoss,
    "contrastive": ContrastiveLoss,
    "multi_similarity": MultiSimilarityLoss,
    "npair": NPairLoss,
    "lifted": LiftedStructureLoss,
    "angular": AngularLoss,
}


def get_loss(name: str, **options) -> MetricLoss:
    """Builds a loss by name with its options.

    Args:
        name: one of `LOSSES` ("margin", "triplet", "contrastive",
            "multi_similarity", "npair", "lifted", "angular"); "-" and "_" are
            interchangeable.
        **options: constructor arguments of the loss, e.g. `symmetrical=True`.
    """
    key = str(name).lower().replace("-", "_")
    if key not in LOSSES:
        raise ValueError(f"Unknown loss name {name!r}; known losses: {sorted(LOSSES)}")
    return LOSSES[key](**options)


__all__ = [
    "LOSSES",
    "AngularLoss",
    "ContrastiveLoss",
    "LiftedStructureLoss",
    "MarginLoss",
    "MetricLoss",
    "MultiSimilarityLoss",
    "NPairLoss",
    "TripletLoss",
    "get_loss",
]
