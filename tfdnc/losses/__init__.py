"""Metric-learning losses.

Every loss is a :class:`MetricLoss` (a `keras.losses.Loss`): `loss(labels,
embeddings)` returns a scalar, `loss.compute_loss_and_stats(labels,
embeddings)` also returns statistics (at least "active_fraction").

The parts: a miner (`tfdnc.miners`) chooses the pairs / triplets, the loss
computes one term per element, a reducer (`tfdnc.losses.reducers`) turns the
terms into the scalar. `CrossBatchMemory` wraps a pair-based loss with a
memory per D&C learner; `ProxyAnchorLoss` keeps proxies per learner.

Example:
>>> loss = get_loss("margin", beta=1.2)
>>> loss = get_loss("triplet", mining="semi_hard", symmetrical=True)
>>> loss = get_loss("margin", xbm_size=4096, embedding_dim=128, num_learners=4)
>>> loss = get_loss("proxy_anchor", num_classes=100, embedding_dim=128, num_learners=4)
"""

from __future__ import annotations

from tfdnc.losses.angular import AngularLoss
from tfdnc.losses.base import MetricLoss
from tfdnc.losses.contrastive import ContrastiveLoss
from tfdnc.losses.lifted import LiftedStructureLoss
from tfdnc.losses.margin import MarginLoss
from tfdnc.losses.memory import CrossBatchMemory
from tfdnc.losses.multi_similarity import MultiSimilarityLoss
from tfdnc.losses.npair import NPairLoss
from tfdnc.losses.proxy_anchor import ProxyAnchorLoss
from tfdnc.losses.reducers import AvgNonZeroReducer, MeanReducer, Reducer, SumReducer, get_reducer
from tfdnc.losses.triplet import TripletLoss

LOSSES: dict[str, type[MetricLoss]] = {
    "margin": MarginLoss,
    "triplet": TripletLoss,
    "contrastive": ContrastiveLoss,
    "multi_similarity": MultiSimilarityLoss,
    "npair": NPairLoss,
    "lifted": LiftedStructureLoss,
    "angular": AngularLoss,
    "proxy_anchor": ProxyAnchorLoss,
}

# Options that go to the memory, not to the wrapped loss, when `xbm_size` is given.
_MEMORY_OPTIONS = ("embedding_dim", "num_learners", "start_step", "batch_loss", "memory_weight")


def get_loss(name: str, xbm_size: int | None = None, **options) -> MetricLoss:
    """Builds a loss by name with its options, optionally inside a cross-batch memory.

    Args:
        name: one of `LOSSES` ("margin", "triplet", "contrastive",
            "multi_similarity", "npair", "lifted", "angular", "proxy_anchor");
            "-" and "_" are interchangeable.
        xbm_size: if > 0, wrap the loss in a `CrossBatchMemory` of this many
            entries per learner; then `embedding_dim` (required),
            `num_learners`, `start_step`, `batch_loss` and `memory_weight` go
            to the memory.
        **options: constructor arguments of the loss, e.g. `symmetrical=True`.
    """
    key = str(name).lower().replace("-", "_")
    if key not in LOSSES:
        raise ValueError(f"Unknown loss name {name!r}; known losses: {sorted(LOSSES)}")
    if not xbm_size:
        return LOSSES[key](**options)
    if not LOSSES[key].supports_reference:
        raise ValueError(f"`xbm_size`: a cross-batch memory needs a pair-based loss, {name!r} is not one")
    memory = {k: options.pop(k) for k in _MEMORY_OPTIONS if k in options}
    return CrossBatchMemory(LOSSES[key](**options), memory_size=xbm_size, **memory)


__all__ = [
    "LOSSES",
    "AngularLoss",
    "AvgNonZeroReducer",
    "ContrastiveLoss",
    "CrossBatchMemory",
    "LiftedStructureLoss",
    "MarginLoss",
    "MeanReducer",
    "MetricLoss",
    "MultiSimilarityLoss",
    "NPairLoss",
    "ProxyAnchorLoss",
    "Reducer",
    "SumReducer",
    "TripletLoss",
    "get_loss",
    "get_reducer",
]
