"""Metric-learning losses.

Every loss is a :class:`MetricLoss` (a `keras.losses.Loss`): `loss(labels,
embeddings)` returns a scalar, `loss.compute_loss_and_stats(labels,
embeddings)` also returns statistics (at least "active_fraction").

The parts: a distance (`tfdnc.distances.Distance`) compares the points, a
miner (`tfdnc.miners`) chooses the pairs / triplets, the loss computes one
term per element, a reducer (`tfdnc.losses.reducers`) turns the terms into the
scalar. `CrossBatchMemory` wraps a pair-based loss with a memory per D&C
learner; `ProxyAnchorLoss` keeps proxies per learner.

Your own loss: subclass `MetricLoss`, implement `compute(batch)`, declare
`NEEDS`, decorate with `@register_loss("name")` (docs/examples/own_loss.py).
A module added to this package is imported (and so registered) with it.

Examples:
    >>> loss = get_loss("margin", beta=1.2)
    >>> loss = get_loss("triplet", mining="semi_hard", symmetrical=True, distance="cosine")
    >>> loss = get_loss("margin", xbm_size=4096, embedding_dim=128, num_learners=4)
    >>> loss = get_loss("proxy_anchor", num_classes=100, embedding_dim=128, num_learners=4)
"""

from __future__ import annotations

import importlib
import pkgutil

from tfdnc.losses.angular import AngularLoss
from tfdnc.losses.base import FACTS, LOSSES, Batch, LossNeeds, MetricLoss, register_loss
from tfdnc.losses.contrastive import ContrastiveLoss
from tfdnc.losses.lifted import LiftedStructureLoss
from tfdnc.losses.margin import MarginLoss
from tfdnc.losses.memory import CrossBatchMemory
from tfdnc.losses.multi_similarity import MultiSimilarityLoss
from tfdnc.losses.npair import NPairLoss
from tfdnc.losses.proxy_anchor import ProxyAnchorLoss
from tfdnc.losses.reducers import AvgNonZeroReducer, MeanReducer, Reducer, SumReducer, get_reducer
from tfdnc.losses.triplet import TripletLoss

# A loss module added to this package registers itself when imported: import them all, so that a
# new loss is one new file (its class joins this namespace and `__all__` below).
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
globals().update({cls.__name__: cls for cls in LOSSES.values() if cls.__module__.startswith(__name__ + ".")})

# Options that go to the memory, not to the wrapped loss, when `xbm_size` is given.
_MEMORY_OPTIONS = ("embedding_dim", "num_learners", "start_step", "batch_loss", "memory_weight")


def loss_class(name: str) -> type[MetricLoss]:
    """The registered loss class of `name` ("-" and "_" are interchangeable); ValueError naming the known ones."""
    key = str(name).lower().replace("-", "_")
    if key not in LOSSES:
        raise ValueError(f"Unknown loss name {name!r}; known losses: {sorted(LOSSES)}")
    return LOSSES[key]


def get_loss(name: str, xbm_size: int | None = None, **options) -> MetricLoss:
    """Builds a loss by name with its options, optionally inside a cross-batch memory.

    Args:
        name: a name in `LOSSES` ("margin", "triplet", "contrastive",
            "multi_similarity", "npair", "lifted", "angular", "proxy_anchor",
            and any loss registered with `register_loss`); "-" and "_" are
            interchangeable.
        xbm_size: if > 0, wrap the loss in a `CrossBatchMemory` of this many
            entries per learner; then `embedding_dim` (required),
            `num_learners`, `start_step`, `batch_loss` and `memory_weight` go
            to the memory.
        **options: constructor arguments of the loss, e.g. `symmetrical=True`.
    """
    cls = loss_class(name)
    if not xbm_size:
        return cls(**options)
    if not cls.NEEDS.reference:
        raise ValueError(f"`xbm_size`: a cross-batch memory needs a pair-based loss, {name!r} is not one")
    memory = {k: options.pop(k) for k in _MEMORY_OPTIONS if k in options}
    return CrossBatchMemory(cls(**options), memory_size=xbm_size, **memory)


def loss_from_config(section, **facts) -> MetricLoss:
    """The loss a run's loss section describes, given the facts of the run the loss declares it needs.

    Args:
        section: a `tfdnc.config.LossConfig` (`loss`, `loss_options`,
            `symmetrical`, `xbm_size`, `xbm_start_step`, `xbm_batch_loss`).
        **facts: what the run knows (`FACTS`: `num_classes`, `embedding_dim`,
            `num_learners`); each loss gets those its `facts_needed` names
            (and a cross-batch memory those it needs), unless its options
            set them.

    Examples:
        >>> from tfdnc.config import TrainConfig
        >>> config = TrainConfig(loss="proxy_anchor", symmetrical=False)
        >>> loss = loss_from_config(config.loss_config, num_classes=100, embedding_dim=128, num_learners=4)
    """
    options = dict(section.loss_options)
    if section.symmetrical:
        options["symmetrical"] = True
    needed = list(loss_class(section.loss).facts_needed(options))
    if section.xbm_size:
        needed += CrossBatchMemory.NEEDS.facts
        options.update(start_step=section.xbm_start_step, batch_loss=section.xbm_batch_loss)
    for fact in needed:
        if fact not in facts:
            raise TypeError(f"loss_from_config: --loss {section.loss} needs the run's `{fact}`")
        options.setdefault(fact, facts[fact])
    return get_loss(section.loss, xbm_size=section.xbm_size, **options)


__all__ = sorted({
    "FACTS", "LOSSES", "AvgNonZeroReducer", "Batch", "CrossBatchMemory", "LossNeeds", "MeanReducer", "MetricLoss",
    "Reducer", "SumReducer", "get_loss", "get_reducer", "loss_class", "loss_from_config", "register_loss",
    *(cls.__name__ for cls in LOSSES.values() if cls.__module__.startswith(__name__ + ".")),
})
