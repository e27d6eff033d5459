"""Where a suite step's time goes: tfdnc's input, train step and `fit` loop against the peer's step.

One suite run's settings (`bench/suite.py`: a data set, multi-similarity, a
setting such as k1, seed 0, no augmentation), built the way `tfdnc.train` builds
them, then timed part by part with the same thread count on both sides:

    input       batches/s of the run's tf.data pipeline alone (the schedule has published)
    step        the compiled train step (Keras's train function) on one fixed batch
    fit-fixed   Keras's `fit` loop on that fixed batch repeated (the loop, without tfdnc's pipeline)
    fit         `model.fit` on the run's pipeline with only the schedule as callback
    fit+cbs     `model.fit` with the run's callbacks (what the suite's s/step measures,
                minus the epoch-end evaluation and saves)
    peer step   the torch peer's forward, loss, backward and Adam step on a fixed batch
                (`bench/peer_torch.py`'s loop; the peer's s/step in the suite)
    cnn, cnn-frozen-bn  the small CNN alone (forward + gradients), BatchNorm training or frozen
    net, peer-net  the network alone on each side (forward, backward, Adam) under a trivial loss:
                what is left of a step's difference is in the metric loss and tfdnc's step around it

    OMP_WAIT_POLICY=PASSIVE .bench-venv/bin/python bench/bench_step_parts.py --dataset shapes --setting k1
    .bench-venv/bin/python bench/bench_step_parts.py --setting dnc-learnable-symm --threads 2

Each part runs `--repeats` times, alternating with the peer (in a process of its own, as in the
suite), and the medians of wall and CPU time per step are printed; CPU time is the process's,
all threads (tf.data's included), which load on the machine inflates much less than wall time.
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
                    inner.t0, inner.c0 = time.perf_counter(), time.process_time()

            def on_train_batch_end(inner, batch, logs=None):
                inner.t1, inner.c1, inner.n = time.perf_counter(), time.process_time(), inner.n + 1

            def on_epoch_end(inner, epoch, logs=None):
                inner.epochs.append(((inner.t1 - inner.t0) / inner.n, (inner.c1 - inner.c0) / inner.n))

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
    start, cpu = time.perf_counter(), time.process_time()
    for _ in stream:
        pass
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def time_step(model, batch, steps: int) -> float:
    """Seconds per call of Keras's compiled train function on one fixed batch (no input pipeline)."""
    import tensorflow as tf

    function = model.make_train_function()
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    iterator = iter(dataset)
    for _ in range(3):
        function(iterator)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        logs = function(iterator)
    float(logs["loss"])
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def time_fit(model, data, callbacks: list, steps: int) -> float:
    """s/step of the second epoch of `fit` on the run's pipeline (the first traces and clusters)."""
    clock = StepClock().callback
    model.fit(data.dataset(), steps_per_epoch=steps, epochs=2, callbacks=list(callbacks) + [clock],
              verbose=0, shuffle=False)
    return clock.epochs[-1]


def time_fit_fixed(model, batch, steps: int) -> tuple[float, float]:
    """s/step of Keras's own `fit` loop on one fixed batch repeated: the loop without tfdnc's pipeline."""
    import keras
    import tensorflow as tf

    clock = StepClock().callback
    keras.Model.fit(model, tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=steps, epochs=2,
                    callbacks=[clock], verbose=0)
    return clock.epochs[-1]


def time_net(model, batch, steps: int) -> tuple[float, float]:
    """s/step of the network alone: forward, backward and an Adam step of backbone and head on the fixed
    batch under a trivial loss (the sum of one embedding coordinate): the step without metric loss,
    masks, decay terms and metrics."""
    import keras
    import tensorflow as tf

    images = batch[0]["images"]
    variables = model.network_variables()
    optimizer = keras.optimizers.Adam(1e-6)
    optimizer.build(variables)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            z = tf.math.l2_normalize(model.embedder(images, training=True), axis=1)
            loss = tf.reduce_sum(z[:, 0])
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    for _ in range(3):
        step()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = step()
    float(loss)
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def time_backbone(batch, steps: int, frozen: bool) -> tuple[float, float]:
    """s/step of the small CNN alone (forward + gradients of the sum of its features), its BatchNorm
    layers training or frozen (`build_backbone(freeze_batchnorm=)`): what training BatchNorm costs."""
    import tensorflow as tf

    from tfdnc.backbones import build_backbone

    images = batch[0]["images"]
    model = build_backbone("small_cnn", tuple(images.shape[1:]), freeze_batchnorm=frozen)
    variables = model.trainable_variables

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(model(images, training=True))
        return tape.gradient(total, variables)

    for _ in range(3):
        step()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        grads = step()
    float(tf.reduce_sum(grads[0]))
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def peer_step(values: dict, splits, batch_images, batch_labels, steps: int, net_only: bool = False):
    """Seconds per step (wall, CPU) of the peer's loop body on one fixed batch (`net_only`: `time_net`'s
    trivial loss instead of the metric loss)."""
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
        loss = emb[:, 0].sum() if net_only else objective(emb, y, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    for step in range(3):
        one(step)
    start, cpu = time.perf_counter(), time.process_time()
    for step in range(steps):
        one(step)
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def peer_step_in_own_process(values: dict, args, batch_images, batch_labels, steps: int,
                             net_only: bool = False) -> tuple[float, float]:
    """`peer_step` in a fresh process, as the suite runs the peer (TensorFlow's idle thread pools in this
    process would otherwise share its CPU time)."""
    import subprocess

    import numpy as np

    folder = tempfile.mkdtemp(prefix="step-parts-peer-")
    np.savez(os.path.join(folder, "batch.npz"), images=batch_images, labels=batch_labels)
    with open(os.path.join(folder, "job.json"), "w") as f:
        json.dump({"values": values, "dataset": args.dataset, "threads": args.threads, "steps": steps,
                   "net_only": net_only}, f, default=str)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--peer-worker", folder], check=True,
                         capture_output=True, text=True).stdout
    wall, cpu = json.loads(out.strip().splitlines()[-1])
    return wall, cpu


def peer_worker(folder: str) -> int:
    import numpy as np
    import torch

    from tfdnc.datasets import load_dataset

    with open(os.path.join(folder, "job.json")) as f:
        job = json.load(f)
    torch.set_num_threads(int(job["threads"]))
    batch = np.load(os.path.join(folder, "batch.npz"), allow_pickle=False)
    splits = load_dataset(job["dataset"])
    print(json.dumps(peer_step(job["values"], splits, batch["images"], batch["labels"], int(job["steps"]),
                               net_only=bool(job.get("net_only")))))
    return 0


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
    parser.add_argument("--parts", nargs="*", default=["input", "step", "fit-fixed", "fit", "fit+cbs", "peer"])
    parser.add_argument("--json", help="also write the medians here")
    parser.add_argument("--peer-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer_worker:
        return peer_worker(args.peer_worker)

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
    times: dict[str, list[tuple[float, float]]] = {part: [] for part in args.parts}
    for _ in range(args.repeats):
        for part in args.parts:
            if part == "input":
                times[part].append(time_input(data, steps))
            elif part == "step":
                times[part].append(time_step(model, batch, steps))
            elif part in ("cnn", "cnn-frozen-bn"):
                times[part].append(time_backbone(batch, steps, frozen=part == "cnn-frozen-bn"))
            elif part == "net":
                times[part].append(time_net(model, batch, steps))
            elif part == "peer-net":
                times[part].append(peer_step_in_own_process(values, args, batch_images, batch_labels, steps, True))
            elif part == "fit-fixed":
                times[part].append(time_fit_fixed(model, batch, steps))
            elif part == "fit":
                times[part].append(time_fit(model, data, [schedule], steps))
            elif part == "fit+cbs":
                times[part].append(time_fit(model, data, full, steps))
            elif part == "peer":
                times[part].append(peer_step_in_own_process(values, args, batch_images, batch_labels, steps))
    medians = {part: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
               for part, runs in times.items()}
    print(f"{args.dataset} {args.loss} {args.setting} threads={args.threads} jit={args.jit} "
          f"load={os.getloadavg()[0]:.1f}   per step: wall ms / CPU ms (the process, all threads)")
    for part, (wall, cpu) in medians.items():
        ratio = (f"  {wall / medians['peer'][0]:.2f}x / {cpu / medians['peer'][1]:.2f}x peer"
                 if "peer" in medians and part != "peer" else "")
        print(f"  {part:8s} {1000 * wall:7.2f} / {1000 * cpu:6.2f}{ratio}   "
              f"(runs: {', '.join(f'{1000 * w:.1f}/{1000 * c:.1f}' for w, c in times[part])})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "medians": medians, "times": times}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
