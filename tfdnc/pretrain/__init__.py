"""Self-supervised pretraining by ordering, with a learned permutation-sampling policy.

`python -m tfdnc.pretrain --dataset mnist --out backbone.weights.h5` trains a
backbone to tell which permutation shuffled an image's jigsaw tiles and
writes weights that `tfdnc.backbones.build_backbone(name, shape,
weights=path)` (and `train.py --backbone-weights path`) loads.
"""

from tfdnc.pretrain.callbacks import (HeldOutMonitor, HeldOutPermutations, PolicySamplingCallback,
                                      PretrainCheckpoint, policy_state)
from tfdnc.pretrain.handoff import (export_backbone_weights, recalibrate_batchnorm,
                                    set_batchnorm_momentum)
from tfdnc.pretrain.jigsaw import (ClipFrames, JigsawTiles, OrderPredictionModel, normalize_items,
                                   shuffle_items)
from tfdnc.pretrain.permutations import (generate_permutations, hamming_distances,
                                         inverse_permutations, mean_hamming_distance,
                                         min_hamming_distance)
from tfdnc.pretrain.policy import PermutationPolicy, ReinforceTrainer, reinforce_loss

__all__ = [
    "ClipFrames", "HeldOutMonitor", "HeldOutPermutations", "JigsawTiles", "OrderPredictionModel",
    "PermutationPolicy", "PolicySamplingCallback", "PretrainCheckpoint", "ReinforceTrainer",
    "export_backbone_weights", "generate_permutations", "hamming_distances",
    "inverse_permutations", "mean_hamming_distance", "min_hamming_distance", "normalize_items",
    "policy_state", "recalibrate_batchnorm", "reinforce_loss", "set_batchnorm_momentum", "shuffle_items",
]
