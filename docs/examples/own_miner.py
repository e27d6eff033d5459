"""Your own miner: triplets whose negative lies within a band of the positive, for any triplet loss."""
import keras
import numpy as np
import tensorflow as tf

from tfdnc.distances import pairwise_euclidean
from tfdnc.losses import TripletLoss
from tfdnc.miners import Miner, TripletSelection, label_masks


@keras.saving.register_keras_serializable(package="my_miners")  # so a saved loss keeps its miner
class BandMiner(Miner):
    """Every (a, p, n) with d(a, n) < d(a, p) + band: the hard and semi-hard triplets.

    A miner gets the (B, N) distance matrix and the positive / negative masks, and returns
    the triplets as broadcastable tensors (axis 0 the anchor) with a mask of the valid ones.
    """

    def __init__(self, band: float = 0.2):
        if band <= 0:
            raise ValueError(f"BandMiner: `band` must be > 0, got {band}")
        self.band = float(band)

    def __call__(self, matrix, positive_mask, negative_mask, dim=None):
        d_ap, d_an = matrix[:, :, None], matrix[:, None, :]  # (B, N, 1), (B, 1, N)
        valid = positive_mask[:, :, None] & negative_mask[:, None, :] & (d_an < d_ap + self.band)
        chosen = tf.reduce_sum(tf.cast(valid, tf.float32))
        return TripletSelection(d_ap, d_an, valid, stats={"mined_triplets": chosen})

    def get_config(self) -> dict:
        return {"band": self.band}


labels = tf.constant([0, 0, 1, 1, 2, 2])
x = tf.math.l2_normalize(tf.random.stateless_normal((6, 8), seed=(3, 4)), axis=1)

# The miner alone, on a distance matrix:
positive, negative = label_masks(labels)
selection = BandMiner(band=0.2)(pairwise_euclidean(x), positive, negative)
print("triplets in the band:", int(selection.stats["mined_triplets"]))

# With a loss: the loss consumes the selection, its formula unchanged.
loss = TripletLoss(miner=BandMiner(band=0.2), margin=0.2)
value, stats = loss.compute_loss_and_stats(labels, x)
print(f"triplet loss {float(value):.3f}, active {float(stats['active_fraction']):.2f}")

# It round-trips through Keras serialisation with the loss (as in a saved model.keras).
again = keras.losses.deserialize(keras.losses.serialize(loss))
np.testing.assert_allclose(float(again(labels, x)), float(value), rtol=1e-6)
