"""The phase policy of Divide & Conquer: what each epoch trains, when to re-cluster, and at which K.

It holds no state and touches neither model nor data: given an epoch, the
number of epochs and the epoch of the last re-clustering, it says

- whether the loss uses the full embedding (the "conquer" phase),
- whether only the embedding layer and masks learn (frozen backbone),
- whether the epoch belongs to the final K = 1 phase (CVPR),
- whether the training set is re-clustered after the epoch,
- and, the one place of the K rule, how many clusters each clustering makes
  (`KStep`): K = k_final from the start ("fixed", CVPR), or K = 1, 2, 4, ...
  doubling at every re-clustering until k_final ("double", TPAMI).

Examples:
    >>> policy = PhasePolicy(k_final=4, recluster_every=2, full_embedding_epoch=8)
    >>> policy.phase(8, total_epochs=10).full_embedding
    True
    >>> [e for e in range(6) if policy.reclusters_after(e, 6)]
    [1, 3]
    >>> policy.recluster_step(2).new_k
    4
"""

from __future__ import annotations

from dataclasses import dataclass

# "double" (TPAMI: K = 1, 2, 4, ... every T epochs) or "fixed" (CVPR: K = k_final from the start).
GROWTH = ("double", "fixed")


@dataclass(frozen=True)
class KStep:
    """The K of one clustering: `k` clusters of the fresh features, each split in two if `split`.

    Attributes:
        current_k: K before it (the learners whose ids the new clusters keep).
        k: the number of clusters of the fresh clustering.
        split: every fresh cluster is divided by 2-means, so K doubles.
    """

    current_k: int
    k: int
    split: bool = False

    @property
    def new_k(self) -> int:
        """K after the clustering: the number of learners from the next epoch on."""
        return 2 * self.k if self.split else self.k


@dataclass(frozen=True)
class Phase:
    """What one epoch trains.

    Attributes:
        epoch: the 0-based epoch.
        full_embedding: the loss uses the full embedding, not one learner's.
        backbone_frozen: only the embedding layer and the masks learn.
        final_k1: all training data form one cluster (the final CVPR phase).
    """

    epoch: int
    full_embedding: bool = False
    backbone_frozen: bool = False
    final_k1: bool = False


class PhasePolicy:
    """Decides the phase of every epoch and the epochs after which to re-cluster.

    Args:
        k_final: the final number of learners (K = 1: never re-cluster).
        recluster_every: T, re-cluster after every T-th epoch (not the last).
        full_embedding_epoch: from this epoch on the loss uses the full
            embedding (None: never).
        final_k1_epochs: the last n epochs train on all data as one cluster.
        freeze_backbone_after_recluster: freeze the backbone on epoch 0 and on
            the epoch right after each re-clustering.
        growth: "double" (TPAMI: K = 1, 2, 4, ... every T epochs) or
            "fixed" (CVPR: K = k_final from the first clustering).
    """

    def __init__(
        self,
        *,
        k_final: int,
        recluster_every: int = 2,
        full_embedding_epoch: int | None = None,
        final_k1_epochs: int = 0,
        freeze_backbone_after_recluster: bool = False,
        growth: str = "double",
    ):
        if growth not in GROWTH:
            raise ValueError(f"PhasePolicy: `growth` must be one of {GROWTH}, got {growth!r}")
        if int(recluster_every) < 1:
            raise ValueError(f"PhasePolicy: `recluster_every` must be >= 1, got {recluster_every}")
        if int(k_final) < 1:
            raise ValueError(f"PhasePolicy: `k_final` must be >= 1, got {k_final}")
        if int(final_k1_epochs) < 0:
            raise ValueError(f"PhasePolicy: `final_k1_epochs` must be >= 0, got {final_k1_epochs}")
        self.k_final = int(k_final)
        self.recluster_every = int(recluster_every)
        self.full_embedding_epoch = full_embedding_epoch
        self.final_k1_epochs = int(final_k1_epochs)
        self.freeze_backbone_after_recluster = bool(freeze_backbone_after_recluster)
        self.growth = growth

    def phase(self, epoch: int, total_epochs: int | None = None, last_recluster_epoch: int | None = None) -> Phase:
        """The phase of `epoch` in a run of `total_epochs` (None: unknown length)."""
        final_k1 = bool(total_epochs and self.final_k1_epochs and epoch >= total_epochs - self.final_k1_epochs)
        full = final_k1 or (self.full_embedding_epoch is not None and epoch >= self.full_embedding_epoch)
        # The TPAMI code freezes on every epoch e with e % T == 0, epoch 0
        # (right after the first clustering) included
        # (CompVis/metric-learning-divide-and-conquer-improved: train.py:822-826).
        frozen = self.freeze_backbone_after_recluster and (
            epoch == 0 or (last_recluster_epoch is not None and epoch == last_recluster_epoch + 1)
        )
        return Phase(epoch=int(epoch), full_embedding=full, backbone_frozen=frozen, final_k1=final_k1)

    def reclusters_after(self, epoch: int, total_epochs: int | None = None) -> bool:
        """Whether the training set is re-clustered after `epoch`.

        Every T epochs, except after the last one, and never when the run
        ends at K = 1: one cluster of everything needs no features.
        """
        if self.k_final == 1:
            return False
        last = total_epochs is not None and epoch + 1 >= total_epochs
        return (epoch + 1) % self.recluster_every == 0 and not last

    # --- the K rule ---------------------------------------------------------------------
    def initial_k(self) -> int:
        """K of a fresh run's first epoch: k_final with growth "fixed", else 1."""
        return self.k_final if self.growth == "fixed" else 1

    def initial_step(self) -> KStep | None:
        """The clustering before a fresh run's first epoch, or None (K = 1: one cluster of everything)."""
        k = self.initial_k()
        return KStep(current_k=1, k=k) if k > 1 else None

    def recluster_step(self, current_k: int) -> KStep:
        """The re-clustering of a run at `current_k` learners.

        With growth "double" and K < k_final, as the TPAMI code does: a fresh
        clustering at the current K whose clusters then split in two (K
        doubles); otherwise a fresh clustering at the same K.
        """
        split = self.growth == "double" and current_k < self.k_final
        return KStep(current_k=int(current_k), k=int(current_k), split=split)
