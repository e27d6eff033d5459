"""Optimizers tfdnc adds to Keras's: Adam with a learning-rate multiplier per variable.

Layer-wise learning-rate decay (BEiT, MAE, DINOv2 fine-tuning) gives each
transformer block its own learning rate. torch does it with parameter
groups; Keras 3 optimizers have one learning rate, so `LayerDecayAdam`
multiplies it per variable inside Adam's `update_step` (the one place a
variable's step size is formed). Everything else is Keras's Adam: its
state, `LossScaleOptimizer` wrapping, distribution strategies.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping

import keras


@keras.saving.register_keras_serializable(package="tfdnc")
class LayerDecayAdam(keras.optimizers.Adam):
    """Adam whose learning rate is multiplied, per variable, by `lr_multipliers[variable.path]`.

    Variables whose path is not in the mapping use the learning rate as it
    is. The multipliers are part of the config, so a `.keras` file restores
    them with the optimizer. Decoupled `weight_decay` (Keras's) uses the
    plain learning rate for every variable; tfdnc's default coupled L2 goes
    through the gradient and so follows the multipliers.

    Args:
        learning_rate: as `keras.optimizers.Adam`.
        lr_multipliers: {variable path: multiplier > 0}, e.g. from
            `tfdnc.hub_backbones.layer_decay_multipliers(backbone, 0.75)`.
        **kwargs: as `keras.optimizers.Adam`.

    Examples:
        >>> optimizer = LayerDecayAdam(1e-4, lr_multipliers={"encoder/layers_0/norm1/gamma": 0.5})
    """

    def __init__(self, learning_rate=0.001, lr_multipliers: Mapping[str, float] | None = None, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.lr_multipliers = {str(k): float(v) for k, v in (lr_multipliers or {}).items()}
        bad = {k: v for k, v in self.lr_multipliers.items() if not 0 < v < float("inf")}
        if bad:
            raise ValueError(f"LayerDecayAdam: every multiplier must be a finite number > 0, got {bad}")
        self._multipliers: dict = {}

    def build(self, var_list):
        if not self.built:
            shared = [p for p, n in Counter(v.path for v in var_list).items() if n > 1 and p in self.lr_multipliers]
            if shared:
                raise ValueError(f"LayerDecayAdam: several variables share the path(s) {shared}, so their "
                                 "learning-rate multipliers are ambiguous")
            self._multipliers = {self._var_key(v): self.lr_multipliers[v.path]
                                 for v in var_list if v.path in self.lr_multipliers}
        super().build(var_list)

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self._multipliers.get(self._var_key(variable))
        if multiplier is not None:
            learning_rate = learning_rate * multiplier
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "lr_multipliers": dict(self.lr_multipliers)}
