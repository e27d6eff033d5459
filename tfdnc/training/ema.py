"""An exponential moving average (EMA) of the network's weights, evaluated, saved and exported.

Keras optimizers keep the average themselves (`use_ema=True`, one average
per variable the optimizer was built on, stored with its state, so every
backup generation saves it and a resume continues it). Two things around it
are the run's:

- `AveragedAdam`: Keras's `fit` ends by calling the optimizer's
  `finalize_variable_values(model.trainable_weights)`, which overwrites
  variables with their averages *by position*; the D&C model's network
  optimizer is built on the backbone and head only (the masks and the loss
  have optimizers of their own), so that list does not line up. This Adam
  leaves the final overwrite to `SwapAverage`, which knows the variables.
- `SwapAverage`: puts the averages into the model for the evaluation at each
  epoch's end and takes them out again before the backup (so a backup holds
  the training weights, and a resume continues training them); at the end of
  training it leaves the averages in, so model.keras and the export hold them.

The average covers what the network optimizer trains: backbone and head.
The learnable masks do not enter the evaluation embedding (TPAMI evaluates
normalize(z), `SubspaceMasks.full_embedding`), and BatchNorm's running
statistics are not trainable: they stay those of the training weights.

Examples:
    >>> from tfdnc.datasets import load_dataset
    >>> splits = load_dataset("shapes", num_classes=32, images_per_class=8)
    >>> model = tfdnc.DivideAndConquerModel(tfdnc.build_backbone("small_cnn", (32, 32, 3)), embedding_dim=16, k_final=2)
    >>> loss = tfdnc.losses.MultiSimilarityLoss()
    >>> model.compile(optimizer=AveragedAdam(1e-3, use_ema=True, ema_momentum=0.999), loss=loss)
    >>> swap = SwapAverage()
    >>> evaluation = keras.callbacks.LambdaCallback()   # e.g. tfdnc.evaluation.RetrievalEvaluation
    >>> history = model.fit(splits.train.images, splits.train.labels, epochs=2, verbose=0,
    ...                     callbacks=[swap.swap_in, evaluation, swap.swap_out])  # the model adds its schedule
    >>> SwapAverage.active(model)
    True
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfdnc")
class AveragedAdam(keras.optimizers.Adam):
    """Adam whose end-of-`fit` finalisation is left to `SwapAverage` (see the module)."""

    def finalize_variable_values(self, var_list):
        # Keras passes model.trainable_weights, which includes variables this
        # optimizer does not train; SwapAverage.on_train_end does it by identity.
        return None


def _optimizer(model):
    optimizer = model.optimizer
    return getattr(optimizer, "inner_optimizer", optimizer)


def swap_weights(model) -> None:
    """Exchanges the network optimizer's trained variables with their averages (twice: back again)."""
    optimizer = _optimizer(model)
    for variable, average in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average):
        if average is None:
            continue
        value = ops.convert_to_numpy(variable)
        variable.assign(average)
        average.assign(value)


class _Hook(keras.callbacks.Callback):
    def __init__(self, owner: "SwapAverage", action: str):
        super().__init__()
        self.owner = owner
        self.action = action

    def on_epoch_end(self, epoch, logs=None):
        if self.action == "in":
            self.owner.put_in(self.model)
        else:
            self.owner.take_out(self.model)

    def on_train_end(self, logs=None):
        if self.action == "out":
            self.owner.finalize(self.model)


class SwapAverage:
    """Two callbacks around the per-epoch evaluation: `swap_in` before it, `swap_out` after it.

    Without an averaging optimizer (`use_ema` off) both do nothing.
    """

    def __init__(self):
        self.inside = False
        self.swap_in = _Hook(self, "in")
        self.swap_out = _Hook(self, "out")

    @staticmethod
    def active(model) -> bool:
        optimizer = _optimizer(model)
        return bool(getattr(optimizer, "use_ema", False)) and hasattr(optimizer, "_model_variables_moving_average")

    def put_in(self, model) -> None:
        if self.active(model) and not self.inside:
            swap_weights(model)
            self.inside = True

    def take_out(self, model) -> None:
        if self.active(model) and self.inside:
            swap_weights(model)
            self.inside = False

    def finalize(self, model) -> None:
        """The averages into the model for good (what model.keras and the export hold)."""
        if not self.active(model):
            return
        self.take_out(model)
        optimizer = _optimizer(model)
        for variable, average in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average):
            if average is not None:
                variable.assign(average)
