"""Where a suite step's time goes: tfdnc's input, train step and `fit` loop against the peer's step.

One suite run's settings (`bench/suite.py`: a data set, multi-similarity, a
setting such as k1, seed 0, no augmentation), built the way `tfdnc.train` builds
them, then timed part by part with the same thread count on both sides:

    input       batches/s of the run's tf.data pipeline alone (the schedule has published)
    step        the compiled train step (Keras's train function) on one fixed batch
    fit         `model.fit` on the run's pipeline with only the schedule as callback
    fit+cbs     `model.fit` with the run's callbacks (what the suite's s/step measures,
                minus the epoch-end evaluation and saves)
    peer step   the torch peer's forward, loss, backward and Adam step on a fixed batch
                (`bench/peer_torch.py`'s loop; the peer's s/step in the suite)

    OMP_WAIT_POLICY=PASSIVE .bench-venv/bin/python bench/bench_step_parts.py --dataset shapes --setting k1
    .bench-venv/bin/python bench/bench_step_parts.py --setting dnc-learnable-symm --threads 2

Each part runs `--repeats` times, alternating with the peer, and the median is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build(args):
    """The suite run's config, data, model and schedule, as `tfdnc.train._run` builds them."""
    import bench_peer
    from tfdnc.config import TrainConfig
    from tfdnc.datasets import load_dataset
    from tfdnc.losses import loss_from_config
    import tfdnc.train as train

    splits = load_dataset(args.dataset)
    overrides = bench_peer.parse_set(args.set)
    settings = bench_peer.resolve_settings(args.dataset, args.loss, args.setting, args.seed, None,
                                           {"eval_every": 1, **overrides})
    values = bench_peer.full_settings(settings, splits)
    values["run_dir"] = tempfile.mkdtemp(prefix="step-parts-")
    config = TrainConfig.from_dict(values, source="bench_step_parts")
    strategy = train.build_strategy(config.strategy)
    run_dir = train.prepare_run_dir(config, False, True)
    data = train.TrainingData.from_config(config.data_config, run_dir=run_dir, seed=config.seed,
                                          k_final=config.k_final)
    model = train.build_model(config.model_config, strategy, data,
                              loss=loss_from_config(config.loss_config, **data.facts(config.model_config)),
                              learning_rate=train.learning_rate_schedule(config.schedule_config,
                                                                         config.learning_rate, data.steps),
                              jit_compile=args.jit or config.jit_compile)
    schedule = train.build_schedule(config, strategy, data, run_dir, 0)
    return config, splits, data, model, schedule, run_dir, values


class StepClock:
    """Seconds per step of each epoch, from its first batch's start to its last batch's end."""

    def __init__(self):
        import keras

        class Clock(keras.callbacks.Callback):
            def __init__(inner):
                super().__init__()
                inner.epochs, inner.t0, inner.t1, inner.n = [], None, None, 0

            def on_epoch_begin(inner, epoch, logs=None):
                inner.t0, inner.n = None, 0

            def on_train_batch_begin(inner, batch, logs=None):
                if inner.t0 is None:
                    inner.t0 = time.perf_counter()

            def on_train_batch_end(inner, batch, logs=None):
                inner.t1, inner.n = time.perf_counter(), inner.n + 1

            def on_epoch_end(inner, epoch, logs=None):
                inner.epochs.append((inner.t1 - inner.t0) / inner.n)

        self.callback = Clock()


def batches(data, count: int):
    """`count` batches of the run's pipeline outside `fit`, with the schedule's handshake done by hand.

    The sampler releases one epoch at a time (`EpochGate`): epoch 1 is published
    here, and the gate is closed again before the iterator is dropped, as fit's
    end does (the generator then waits for epoch 2, and the iterator's
    destructor would wait for the generator).
    """
    data.sampler.reset_publication()
    data.sampler.publish(1)
    iterator = iter(data.dataset())
    try:
        for _ in range(count):
            yield next(iterator)
    finally:
        data.sampler.close()
        del iterator


def time_input(data, steps: int) -> float:
    """Seconds per batch of the pipeline alone."""
    steps = min(steps, data.steps - 1)  # one published epoch holds data.steps batches
    stream = batches(data, steps + 1)
    next(stream)
    start = time.perf_counter()
    for _ in stream:
        pass
    return (time.perf_counter() - start) / steps


def time_step(model, batch, steps: int) -> float:
    """Seconds per call of Keras's compiled train function on one fixed batch (no input pipeline)."""
    import tensorflow as tf

    function = model.make_train_function()
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    iterator = iter(dataset)
    for _ in range(3):
        function(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        logs = function(iterator)
    float(logs["loss"])
    return (time.perf_counter() - start) / steps


def time_fit(model, data, callbacks: list, steps: int) -> float:
    """s/step of the second epoch of `fit` on the run's pipeline (the first traces and clusters)."""
    clock = StepClock().callback
    model.fit(data.dataset(), steps_per_epoch=steps, epochs=2, callbacks=list(callbacks) + [clock],
              verbose=0, shuffle=False)
    return clock.epochs[-1]


def peer_step(values: dict, splits, batch_images, batch_labels, steps: int) -> float:
    """Seconds per step of the peer's loop body on one fixed batch."""
    import numpy as np
    import peer_torch
    import torch
    import torch.nn.functional as F

    from tfdnc.data.pipeline import image_channels

    channels = image_channels(splits.train)
    momentum, epsilon = peer_torch.tfdnc_batchnorm_settings(values, channels)
    objective = peer_torch.PeerObjective(values["loss"], peer_torch.tfdnc_loss_config(values))
    model = peer_torch.Embedder(peer_torch.SmallCNN(channels, 32, momentum, epsilon), int(values["embedding_dim"]))
    peer_torch.init_like_keras(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(values["learning_rate"]), eps=1e-7,
                                 weight_decay=float(values["weight_decay"]))
    x = torch.from_numpy(np.ascontiguousarray(batch_images, dtype=np.float32))
    y = torch.as_tensor(batch_labels, dtype=torch.long)
    model.train()

    def one(step):
        emb = F.normalize(model(x), dim=1)
        loss = objective(emb, y, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    for step in range(3):
        one(step)
    start = time.perf_counter()
    for step in range(steps):
        one(step)
    return (time.perf_counter() - start) / steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--loss", default="multi_similarity")
    parser.add_argument("--setting", default="k1", help="a tfdnc setting of bench/suite.py (k1, dnc-learnable-symm, ...)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=150, help="timed steps per part")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jit", action="store_true", help="compile the train step with XLA")
    parser.add_argument("--set", nargs="*", default=[], help="extra TrainConfig fields, key=value")
    parser.add_argument("--parts", nargs="*", default=["input", "step", "fit", "fit+cbs", "peer"])
    parser.add_argument("--json", help="also write the medians here")
    args = parser.parse_args(argv)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        if "peer" in args.parts:
            raise SystemExit("the peer part needs torch: run with .bench-venv/bin/python or leave out --parts peer")
    import numpy as np

    import tfdnc.train as train

    config, splits, data, model, schedule, run_dir, values = build(args)
    # Epoch 1 publishes the clusters and traces the step; the parts are then timed on a warm model.
    schedule_clock = StepClock().callback
    model.fit(data.dataset(), steps_per_epoch=data.steps, epochs=1, callbacks=[schedule, schedule_clock], verbose=0,
              shuffle=False)
    batch = list(batches(data, 1))[0]
    batch_images = batch[0]["images"].numpy()  # NHWC in [0, 255]: the peer permutes inside its forward
    batch_labels = batch[1].numpy().reshape(-1)
    from tfdnc.evaluation import RetrievalEvaluation

    evaluation = RetrievalEvaluation.from_protocol(data.splits, train.embed_function(model, config.data_config),
                                                   every=10**6)  # never due: its time is not a step's
    full = train.build_callbacks(schedule, evaluation, run_dir, config, chief=True)
    steps = min(args.steps, data.steps)
    times: dict[str, list[float]] = {part: [] for part in args.parts}
    for _ in range(args.repeats):
        for part in args.parts:
            if part == "input":
                times[part].append(time_input(data, steps))
            elif part == "step":
                times[part].append(time_step(model, batch, steps))
            elif part == "fit":
                times[part].append(time_fit(model, data, [schedule], steps))
            elif part == "fit+cbs":
                times[part].append(time_fit(model, data, full, steps))
            elif part == "peer":
                times[part].append(peer_step(values, splits, batch_images, batch_labels, steps))
    medians = {part: statistics.median(values_) for part, values_ in times.items()}
    print(f"{args.dataset} {args.loss} {args.setting} threads={args.threads} jit={args.jit} "
          f"load={os.getloadavg()[0]:.1f}")
    for part, value in medians.items():
        ratio = f"  {value / medians['peer']:.2f}x peer" if "peer" in medians and part != "peer" else ""
        print(f"  {part:8s} {1000 * value:7.2f} ms{ratio}   (runs: {', '.join(f'{1000 * v:.2f}' for v in times[part])})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "medians": medians, "times": times}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
