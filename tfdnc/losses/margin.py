"""Margin loss (Wu et al., ICCV 2017) with distance-weighted or CVPR-2019 D&C negative selection."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfdnc.losses.base import Batch, LossNeeds, LossParameters, MetricLoss, register_loss, safe_divide
from tfdnc.miners import (
    ClosestBeyondCutoffMiner,
    DistanceWeightedMiner,
    Miner,
    TripletSelection,
    deserialize_miner,
)

# How MarginLoss picks the negative of each anchor-positive pair.
NEGATIVE_SAMPLING = ("distance_weighted", "closest_beyond_cutoff")


@register_loss("margin")
class MarginLoss(MetricLoss):
    """Margin loss on one sampled triplet per anchor-positive pair.

    For every anchor-positive pair (a, p) of the batch one negative n is chosen
    by `negative_sampling`:

    - "distance_weighted" (default; Wu et al. 2017, the TPAMI D&C code): drawn
      with probability proportional to 1/q(d(a, n)), q the density of
      distances between uniform points on the unit sphere in D dimensions
      (distances clamped at `cutoff`, negatives at `nonzero_loss_cutoff` or
      farther never drawn).
    - "closest_beyond_cutoff" (the CVPR 2019 D&C code,
      CompVis/metric-learning-divide-and-conquer: lib/loss/sampler.py:25-98,
      used by lib/loss/margin_loss.py:48-54): no sampling; anchor a takes its
      P_a closest negatives at distance >= `cutoff` (P_a its number of
      positives) and pairs them with its positives, see
      `tfdnc.miners.closest_negatives_beyond_cutoff` (also for what happens
      when fewer negatives lie beyond the cutoff, and how that departs from the
      reference). `nonzero_loss_cutoff` and `seed` are unused.

    Each triplet contributes

        [d(a, p) - beta + alpha]+  +  [beta - d(a, n) + alpha]+

    with Euclidean distances between L2-normalised embeddings; the sum (plus
    `nu` * the sum of the betas used, when beta is learnable) is divided by the
    number of non-zero terms, as in the reference implementations.

    Args:
        alpha: margin around the boundary beta.
        beta: boundary between positive and negative distances (initial value
            when learnable).
        learnable_beta: learn one beta per class; needs `num_classes`. The
            variable is in `trainable_variables` and the model optimises it.
        num_classes: number of training classes (labels must be in
            [0, num_classes)).
        nu: L1 regularisation weight of the learnable betas.
        cutoff: "distance_weighted": lower clamp of distances in the sampling
            weights; "closest_beyond_cutoff": negatives closer than this are
            not selected (only used to fill up a short row). 0.5 in both
            reference codes.
        nonzero_loss_cutoff: negatives at this distance or farther get weight
            0 (defaults to beta + alpha = 1.4); "distance_weighted" only.
        seed: int or None, seeds the sampler's `keras.random.SeedGenerator`.
        negative_sampling: "distance_weighted" or "closest_beyond_cutoff".
        miner: a `tfdnc.miners` triplet miner giving one negative per
            anchor-positive pair (overrides `negative_sampling`).
        reducer: see `MetricLoss`; the default "avg_non_zero" divides by the
            number of non-zero terms, as the reference codes do.
        symmetrical, symm_rule: Symmetrical Synthesis of the negatives (see
            `MetricLoss`); the synthesised distances are used both to select
            the negatives and in the loss.

    Examples:
        >>> loss = MarginLoss()
        >>> x = tf.math.l2_normalize(tf.random.normal((8, 16)), axis=1)
        >>> value = loss(tf.constant([0, 0, 1, 1, 2, 2, 3, 3]), x)
    """

    NEEDS = LossNeeds(reference=True, facts=("num_classes",))
    default_reducer = "avg_non_zero"

    def __init__(
        self,
        alpha: float = 0.2,
        beta: float = 1.2,
        learnable_beta: bool = False,
        num_classes: int | None = None,
        nu: float = 0.0,
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float = 1.4,
        seed: int | None = None,
        negative_sampling: str = "distance_weighted",
        miner: Miner | dict | None = None,
        reducer=None,
        symmetrical: bool = False,
        symm_rule: str = "paper",
        name: str = "margin_loss",
        **kwargs,
    ):
        super().__init__(symmetrical=symmetrical, symm_rule=symm_rule, reducer=reducer, name=name, **kwargs)
        self._check_arguments(alpha, beta, nu, cutoff, nonzero_loss_cutoff, negative_sampling, learnable_beta,
                              num_classes)
        self.alpha = float(alpha)
        self.beta_init = float(beta)
        self.learnable_beta = bool(learnable_beta)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.nu = float(nu)
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)
        self.seed = seed
        self.negative_sampling = negative_sampling
        self._miner_arg = deserialize_miner(miner)
        self.miner = self._miner_arg or self._default_miner()
        self.beta = self._beta_variable() if self.learnable_beta else None

    @classmethod
    def facts_needed(cls, options: dict) -> tuple[str, ...]:
        """The number of classes, only for a learnable beta per class."""
        return ("num_classes",) if options.get("learnable_beta") else ()

    @staticmethod
    def _check_arguments(alpha, beta, nu, cutoff, nonzero_loss_cutoff, negative_sampling, learnable_beta,
                         num_classes) -> None:
        if alpha < 0:
            raise ValueError(f"MarginLoss: `alpha` must be >= 0, got {alpha}")
        if beta <= 0:
            raise ValueError(f"MarginLoss: `beta` must be > 0, got {beta}")
        if nu < 0:
            raise ValueError(f"MarginLoss: `nu` must be >= 0, got {nu}")
        if cutoff <= 0 or nonzero_loss_cutoff <= cutoff:
            raise ValueError(
                "MarginLoss: need 0 < `cutoff` < `nonzero_loss_cutoff`, got "
                f"cutoff={cutoff}, nonzero_loss_cutoff={nonzero_loss_cutoff}"
            )
        if negative_sampling not in NEGATIVE_SAMPLING:
            raise ValueError(
                f"MarginLoss: `negative_sampling` must be one of {NEGATIVE_SAMPLING}, "
                f"got {negative_sampling!r}"
            )
        if learnable_beta and (num_classes is None or int(num_classes) < 1):
            raise ValueError(
                f"MarginLoss: `learnable_beta=True` needs `num_classes` >= 1, got {num_classes}"
            )

    def _default_miner(self) -> Miner:
        """The miner `negative_sampling` names."""
        if self.negative_sampling == "closest_beyond_cutoff":
            return ClosestBeyondCutoffMiner(self.cutoff)
        return DistanceWeightedMiner(self.cutoff, self.nonzero_loss_cutoff, self.seed)

    def _beta_variable(self):
        """One learnable beta per class, a weight of the loss's `variables_layer`."""
        self._variables_layer = LossParameters(name=f"{self.name}_parameters")
        return self._variables_layer.add_weight(
            shape=(self.num_classes,),
            initializer=keras.initializers.Constant(self.beta_init),
            trainable=True,
            dtype="float32",
            name="beta",
        )

    def compute(self, batch: Batch):
        labels, embeddings = batch.labels, batch.embeddings
        d, pos_mask, neg_mask, stats = self._pairs(labels, embeddings, batch.reference)
        dim = embeddings.shape[-1]
        if dim is None:
            raise ValueError("MarginLoss: the embedding size (last axis of `y_pred`) must be static")
        # One negative per anchor-positive pair (a, p), chosen by the miner.
        selection = self.pick_miner(batch)(d, pos_mask, neg_mask, dim=dim)
        loss, terms = self._loss_on_triplets(labels, selection, batch.sample_weight)
        stats = {**stats, **terms, **selection.stats}
        if self.learnable_beta:
            stats["beta_mean"] = tf.reduce_mean(tf.convert_to_tensor(self.beta))
        return loss, stats

    def loss_given_negatives(self, labels, distances, negative_index, positive_mask, has_negative):
        """The loss once negatives are drawn: `negative_index[a, p]` serves the pair (a, p).

        `has_negative` is (B,) (the anchor has negatives: all its pairs are
        triplets) or (B, B) (pair (a, p) got a negative).

        Returns:
            (loss, stats) with "active_fraction" (triplets with a non-zero term)
            and "num_triplets".
        """
        has_negative = tf.convert_to_tensor(has_negative)
        if has_negative.shape.rank == 1:
            has_negative = has_negative[:, None]
        d_an = tf.gather(distances, negative_index, batch_dims=1)
        selection = TripletSelection(distances, d_an, tf.logical_and(positive_mask, has_negative))
        return self._loss_on_triplets(tf.reshape(labels, [-1]), selection, None)

    def _loss_on_triplets(self, labels, selection: TripletSelection, sample_weight):
        """[d_ap - beta + alpha]+ and [beta - d_an + alpha]+ per triplet, reduced together."""
        triplets = tf.cast(selection.mask, tf.float32)
        if self.learnable_beta:
            # one-hot product rather than gather: a dense gradient for the optimiser
            onehot = tf.one_hot(labels, self.num_classes, dtype=tf.float32)
            beta = tf.linalg.matvec(onehot, tf.convert_to_tensor(self.beta))[:, None]
        else:
            beta = tf.constant(self.beta_init, tf.float32)
        pos_loss = tf.nn.relu(selection.positive - beta + self.alpha) * triplets
        neg_loss = tf.nn.relu(beta - selection.negative + self.alpha) * triplets
        # The positive and negative terms are elements of one reduction (the
        # reference codes divide their sum by the number of non-zero terms).
        terms = tf.stack([pos_loss, neg_loss], axis=-1)
        regulariser = None
        if self.learnable_beta and self.nu > 0:
            regulariser = self.nu * tf.reduce_sum(beta * triplets)
        loss = self.reducer(terms, tf.stack([triplets, triplets], axis=-1), sample_weight, extra=regulariser)
        num_triplets = tf.reduce_sum(triplets)
        active = safe_divide(
            tf.reduce_sum(tf.cast(tf.reduce_max(terms, axis=-1) > 0, tf.float32)), num_triplets
        )
        return loss, {"active_fraction": active, "num_triplets": num_triplets}

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "beta": self.beta_init,
            "learnable_beta": self.learnable_beta,
            "num_classes": self.num_classes,
            "nu": self.nu,
            "cutoff": self.cutoff,
            "nonzero_loss_cutoff": self.nonzero_loss_cutoff,
            "seed": self.seed,
            "negative_sampling": self.negative_sampling,
            "miner": None if self._miner_arg is None else keras.saving.serialize_keras_object(self._miner_arg),
        }
