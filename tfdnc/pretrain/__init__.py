"""Self-supervised pretraining by ordering, with a learned permutation-sampling policy.

`python -m tfdnc.pretrain --dataset mnist --out backbone.weights.h5` trains a
backbone to tell which permutation shuffled an image's jigsaw tiles and
writes weights that `tfdnc.backbones.build_backbone(name, shape,
weights=path)` (and `train.py --backbone-weights path`) loads.
"""

from tfdnc.utils.lazy import lazy_attributes

_MODULES = {
    "callbacks": ("HeldOutMonitor", "HeldOutPermutations", "PolicySamplingCallback", "PretrainCheckpoint",
                  "policy_state"),
    "handoff": ("export_backbone_weights", "recalibrate_batchnorm", "set_batchnorm_momentum"),
    "jigsaw": ("ClipFrames", "JigsawTiles", "OrderPredictionModel", "normalize_items", "shuffle_items"),
    "permutations": ("generate_permutations", "hamming_distances", "inverse_permutations",
                     "mean_hamming_distance", "min_hamming_distance"),
    "policy": ("PermutationPolicy", "ReinforceTrainer", "reinforce_loss"),
}
_LAZY = {name: f"tfdnc.pretrain.{module}" for module, names in _MODULES.items() for name in names}


# Loaded on use, so `tfdnc pretrain --help` does not import TensorFlow.
__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "ClipFrames", "HeldOutMonitor", "HeldOutPermutations", "JigsawTiles", "OrderPredictionModel",
    "PermutationPolicy", "PolicySamplingCallback", "PretrainCheckpoint", "ReinforceTrainer",
    "export_backbone_weights", "generate_permutations", "hamming_distances",
    "inverse_permutations", "mean_hamming_distance", "min_hamming_distance", "normalize_items",
    "policy_state", "recalibrate_batchnorm", "reinforce_loss", "set_batchnorm_momentum", "shuffle_items",
]
