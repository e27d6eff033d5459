"""Proxy-Anchor loss (Kim et al., CVPR 2020), with one proxy set per D&C learner."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfdnc.losses.base import (
    Batch, LossNeeds, LossParameters, MetricLoss, learner_slot, log1p_sum_exp, register_loss, safe_divide,
)


@register_loss("proxy_anchor")
class ProxyAnchorLoss(MetricLoss):
    """Every proxy is an anchor: it pulls the batch's samples of its class and pushes the others.

    With s(x, p) the cosine similarity between sample x and proxy p, P the
    proxies (one per class), P+ those with a sample of their class in the
    batch, X_p+ / X_p- the samples of / not of p's class:

        L = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - margin)))
          + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + margin)))

    (the default reducer "mean" of each part over its proxies; weights per
    sample are not supported: the elements are proxies). The proxies are
    trainable variables of `variables_layer`; the model gives them their own
    optimizer (`loss_learning_rate`; the authors train them 100x faster than
    the network). They start as normal draws of standard deviation
    sqrt(2 / num_classes), the authors' `kaiming_normal_(mode="fan_out")`
    (tjddus9597/Proxy-Anchor-CVPR2020: code/losses.py, `Proxy_Anchor.__init__`).

    Divide & Conquer: there is one proxy set per learner (`num_learners`) plus
    one for the full embedding (`learner=None`); a learner's proxies live in
    its masked subspace. Proxies of classes outside a learner's cluster only
    ever act as negatives there.

    Args:
        num_classes: number of training classes (labels in [0, num_classes);
            a label outside has no proxy and only counts as a negative).
        embedding_dim: size of the embeddings (and proxies).
        num_learners: number of D&C learners (K); 1 without D&C.
        margin: delta in the paper (0.1).
        alpha: the scale (32).
        seed: seed of the proxies' initialiser.
        reducer: see `MetricLoss` (applied to each part).

    Examples:
        >>> loss = ProxyAnchorLoss(num_classes=100, embedding_dim=128, num_learners=4)
        >>> labels = tf.constant([0, 0, 7, 7, 42, 42])
        >>> embeddings = tf.math.l2_normalize(tf.random.normal((6, 128)), axis=1)
        >>> value, stats = loss.compute_loss_and_stats(labels, embeddings, learner=1)
    """

    # The proxies are the positives and every other class's proxy a negative:
    # a batch of one class, or of one image per class, still trains.
    NEEDS = LossNeeds(positives=False, negatives=False, symmetrical=False,
                      facts=("num_classes", "embedding_dim", "num_learners"))
    default_distance = "cosine_similarity"

    def __init__(
        self,
        num_classes: int | None = None,
        embedding_dim: int | None = None,
        num_learners: int = 1,
        margin: float = 0.1,
        alpha: float = 32.0,
        seed: int | None = None,
        reducer=None,
        distance=None,
        name: str = "proxy_anchor_loss",
        **kwargs,
    ):
        super().__init__(reducer=reducer, distance=distance, name=name, **kwargs)
        for arg, value in (("num_classes", num_classes), ("embedding_dim", embedding_dim),
                           ("num_learners", num_learners)):
            if value is None or int(value) < 1:
                raise ValueError(f"ProxyAnchorLoss: `{arg}` must be an int >= 1, got {value}")
        if alpha <= 0:
            raise ValueError(f"ProxyAnchorLoss: `alpha` must be > 0, got {alpha}")
        if margin < 0:
            raise ValueError(f"ProxyAnchorLoss: `margin` must be >= 0, got {margin}")
        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim)
        self.num_learners = int(num_learners)
        self.margin = float(margin)
        self.alpha = float(alpha)
        self.seed = seed
        self._variables_layer = LossParameters(name=f"{self.name}_parameters")
        self.proxies = self._variables_layer.add_weight(
            shape=(self.num_learners + 1, self.num_classes, self.embedding_dim),
            initializer=keras.initializers.RandomNormal(stddev=math.sqrt(2.0 / self.num_classes), seed=seed),
            trainable=True,
            dtype="float32",
            name="proxies",
        )

    def compute(self, batch: Batch):
        labels, embeddings = batch.labels, batch.embeddings
        if batch.sample_weight is not None:
            raise ValueError("ProxyAnchorLoss: `sample_weight` is not supported (its terms are per proxy)")
        if embeddings.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"ProxyAnchorLoss: `y_pred` has embedding size {embeddings.shape[-1]}, the proxies "
                f"{self.embedding_dim} (`embedding_dim`)"
            )
        # one-hot product rather than gather: a dense gradient for the optimiser
        slot = learner_slot(batch.learner, self.num_learners)
        select = tf.one_hot(slot, self.num_learners + 1, dtype=tf.float32)
        proxies = tf.tensordot(select, tf.convert_to_tensor(self.proxies), axes=1)  # (C, D)
        s = self.distance(embeddings, proxies)  # (B, C)
        positive = tf.cast(tf.one_hot(labels, self.num_classes), tf.bool)
        negative = tf.logical_not(positive)
        pos_term = log1p_sum_exp(-self.alpha * (s - self.margin), positive, axis=0)  # per proxy
        neg_term = log1p_sum_exp(self.alpha * (s + self.margin), negative, axis=0)
        with_positive = tf.reduce_any(positive, axis=0)
        loss = self.reducer(pos_term, with_positive) + self.reducer(neg_term)
        # a sample is "active" when some other proxy is within 2 margins of its own
        own = tf.reduce_max(tf.where(positive, s, -2.0), axis=1)
        closest_other = tf.reduce_max(tf.where(negative, s, -2.0), axis=1)
        has_proxy = tf.reduce_any(positive, axis=1)
        active = tf.cast(has_proxy & (closest_other + self.margin > own - self.margin), tf.float32)
        return loss, {
            "active_fraction": safe_divide(tf.reduce_sum(active), tf.reduce_sum(tf.cast(has_proxy, tf.float32))),
            "proxies_with_positives": tf.reduce_sum(tf.cast(with_positive, tf.float32)),
        }

    def get_config(self) -> dict:
        config = super().get_config()
        for key in ("symmetrical", "symm_rule"):
            config.pop(key, None)
        return {
            **config,
            "num_classes": self.num_classes,
            "embedding_dim": self.embedding_dim,
            "num_learners": self.num_learners,
            "margin": self.margin,
            "alpha": self.alpha,
            "seed": self.seed,
        }
