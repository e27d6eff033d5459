"""Training loops under a distribution strategy.

- `fit_mirrored`: `model.fit` under a one-host strategy (MirroredStrategy).
- `fit_custom_loop`: the multi-worker loop. Keras 3 `fit` cannot run under
  `MultiWorkerMirroredStrategy` (its iterator hands the step `PerReplica`
  values it fails to convert), while `strategy.run(model.train_step, ...)`
  in a `tf.function` works and keeps the workers in step. The loop drives
  the same Keras callbacks through `keras.callbacks.CallbackList`
  (checkpoints, TensorBoard, History, the Divide & Conquer schedule), so a
  multi-worker run keeps their effects.

Example (on every worker, with `TF_CONFIG` set):

```python
strategy = build_strategy("multi-worker")
with strategy.scope():
    model = ...; model.compile(optimizer=keras.optimizers.Adam(1e-4))

def dataset_fn(context):  # this worker's part of every global batch
    return make_train_dataset(train, sampler, steps, 224, num_shards=context.num_input_pipelines,
                              shard_index=context.input_pipeline_id)

history = fit_custom_loop(model, strategy, dataset_fn, steps_per_epoch=steps, epochs=40,
                          callbacks=[schedule, checkpoint_on_chief])
```
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

__all__ = ["fit_mirrored", "fit_custom_loop", "per_replica_dataset_fn"]


def fit_mirrored(model: keras.Model, strategy: tf.distribute.Strategy, dataset, **fit_kwargs):
    """`model.fit(dataset, **fit_kwargs)` under a one-host strategy.

    The model must have been built and compiled under `strategy.scope()`.
    Keras pulls one batch before `fit` starts when the model remembers its
    strategy (to build it symbolically); the Divide & Conquer input pipeline
    waits for the schedule callback to publish the epoch, so that pull would
    block forever. The model is built already, so the pull is skipped by
    letting the model take the strategy from the surrounding scope instead.
    """
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise ValueError("fit_mirrored: Keras 3 fit cannot run MultiWorkerMirroredStrategy; use fit_custom_loop")
    if not model.built or model.optimizer is None:
        raise ValueError("fit_mirrored: build and compile the model under strategy.scope() first")
    if model.jit_compile and strategy.num_replicas_in_sync > 1:
        # Keras compiles the whole multi-device step (strategy.run included)
        # as one XLA function, which cannot read variables on other devices.
        raise ValueError(
            f"--jit-compile does not work with --strategy mirrored over {strategy.num_replicas_in_sync} devices "
            "(Keras hands XLA the whole multi-device step); drop --jit-compile, or train on one device"
        )
    model._distribute_strategy = None  # noqa: SLF001 - see the docstring
    with strategy.scope():
        return model.fit(dataset, **fit_kwargs)


def per_replica_dataset_fn(make_dataset: Callable[[int, int], tf.data.Dataset], global_batch_size: int):
    """A `distribute_datasets_from_function` input function from `make_dataset(num_shards, shard_index)`.

    Worker w makes the dataset of its contiguous part of every global batch
    and splits it into its local replicas' parts; the strategy hands them to
    the local replicas in order, so replica g of the step holds rows
    [g * b, (g + 1) * b) of the global batch, and the all-gather in the
    train step rebuilds it in the planned order.
    """

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = context.get_per_replica_batch_size(global_batch_size)
        dataset = make_dataset(context.num_input_pipelines, context.input_pipeline_id)
        worker_batch = global_batch_size // context.num_input_pipelines
        if per_replica != worker_batch:
            dataset = dataset.rebatch(per_replica)
        return dataset

    return dataset_fn


def fit_custom_loop(
    model: keras.Model,
    strategy: tf.distribute.Strategy,
    dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
    *,
    steps_per_epoch: int,
    epochs: int,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    initial_epoch: int = 0,
    verbose: int = 1,
) -> keras.callbacks.History:
    """Trains with `strategy.run(model.train_step)`, driving Keras callbacks like `fit`.

    Args:
        model: built and compiled under `strategy.scope()`.
        strategy: any `tf.distribute` strategy (made for MultiWorkerMirrored).
        dataset_fn: input function for `strategy.distribute_datasets_from_function`
            (see `per_replica_dataset_fn`); the dataset must be endless.
        steps_per_epoch, epochs, initial_epoch: as in `fit`.
        callbacks: Keras callbacks; they get `on_train_begin`, epoch and
            batch hooks with the step's logs, as in `fit`. Give checkpoint
            and logging callbacks to the chief only.
        verbose: 0 silent, 1 progress bar, 2 one line per epoch.

    Returns:
        The `History` callback (also `model.history`).
    """
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(f"fit_custom_loop: steps_per_epoch ({steps_per_epoch}) and epochs ({epochs}) must be >= 1")
    if model.optimizer is None:
        raise ValueError("fit_custom_loop: compile the model (under strategy.scope()) first")
    callback_list = keras.callbacks.CallbackList(
        list(callbacks), add_history=True, add_progbar=verbose != 0, model=model,
        verbose=verbose, epochs=epochs, steps=steps_per_epoch,
    )
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    step_for_phase = _traced_steps(model, strategy)
    model.stop_training = False
    logs: dict = {}
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        for metric in model.metrics:
            metric.reset_state()
        callback_list.on_epoch_begin(epoch)
        logs = _run_epoch(model, step_for_phase(), iterator, callback_list, steps_per_epoch, logs)
        epoch_logs = dict(logs)
        callback_list.on_epoch_end(epoch, epoch_logs)
        logs = epoch_logs
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return model.history


def _traced_steps(model: keras.Model, strategy: tf.distribute.Strategy) -> Callable[[], Callable]:
    """A function giving the traced `strategy.run(model.train_step)` of the model's current phase."""
    steps: dict = {}

    def step_function():
        # Phase flags are read while tracing; one traced step per phase.
        key = (model.full_embedding, model.backbone_frozen) if hasattr(model, "full_embedding") else ()
        if key not in steps:
            @tf.function
            def step(batch):
                outputs = strategy.run(model.train_step, args=(batch,))
                # Every replica reports the global-batch loss: take the first.
                return {k: strategy.experimental_local_results(v)[0] for k, v in outputs.items()}

            steps[key] = step
        return steps[key]

    return step_function


def _run_epoch(model: keras.Model, step: Callable, iterator, callback_list, steps_per_epoch: int,
               logs: dict) -> dict:
    """One epoch's steps with their batch hooks; returns the last step's logs (`logs` if none ran)."""
    for batch in range(steps_per_epoch):
        callback_list.on_train_batch_begin(batch)
        outputs = step(next(iterator))
        logs = {k: float(np.asarray(v)) for k, v in outputs.items()}
        callback_list.on_train_batch_end(batch, logs)
        if model.stop_training:
            break
    return logs
