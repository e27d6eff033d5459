"""Re-clustering (embed the training set + k-means + matching) as a share of an epoch.

Times, in one process on the same model and data: one training epoch
(ceil(N / batch) steps through the real input pipeline) and one
re-clustering by `DivideAndConquerSchedule.recluster` (embedding under the
evaluation transform, constrained k-means, Hungarian matching), at fixed K and
while K doubles.

    python bench/bench_recluster.py [--dataset mnist] [--k 2] [--epochs 2]
"""

from __future__ import annotations

import argparse
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfdnc.backbones import build_backbone  # noqa: E402
from tfdnc.training import DivideAndConquerSchedule  # noqa: E402
from tfdnc.data.pipeline import image_channels, make_train_dataset  # noqa: E402
from tfdnc.data.sampling import ClusterBatchSampler  # noqa: E402
from tfdnc.datasets import load_dataset  # noqa: E402
from tfdnc.model import DivideAndConquerModel  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--k", type=int, default=2, help="K after growth")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="re-clusterings timed")
    args = parser.parse_args()

    splits = load_dataset(args.dataset)
    train = splits.train
    shape = (args.image_size, args.image_size, image_channels(train))
    model = DivideAndConquerModel(build_backbone("small_cnn", shape), embedding_dim=64, k_max=args.k)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    sampler = ClusterBatchSampler(np.unique(train.labels, return_inverse=True)[1], 4, 8)
    steps = math.ceil(len(train) / sampler.batch_size)
    dataset = make_train_dataset(train, sampler, steps, args.image_size, flip=False)
    # recluster_every larger than the run: the timed re-clusterings are called by hand.
    schedule = DivideAndConquerSchedule(sampler, train, k_final=args.k, image_size=args.image_size,
                                        recluster_every=10**6, verbose=0)
    timer = EpochTimer()
    model.fit(dataset, steps_per_epoch=steps, epochs=args.epochs, callbacks=[schedule, timer], verbose=0)
    epoch_s = float(np.median(timer.seconds[1:] or timer.seconds))  # the first epoch traces

    grow_s, fixed_s, embed_s = [], [], []
    for i in range(args.repeat):
        start = time.perf_counter()
        schedule.clustering_features()
        embed_s.append(time.perf_counter() - start)
        k_before = schedule.k
        start = time.perf_counter()
        schedule.recluster(epoch=i)  # grows K while K < k, then re-clusters at fixed K
        (grow_s if schedule.k != k_before else fixed_s).append(time.perf_counter() - start)

    print(f"data={args.dataset} train images={len(train)} image={args.image_size} steps/epoch={steps} "
          f"batch={sampler.batch_size} K={args.k}")
    print("| what | seconds | share of epoch + re-clustering |")
    print("|---|---|---|")
    print(f"| training epoch (median) | {epoch_s:.2f} | |")
    print(f"| embed training set (median) | {np.median(embed_s):.2f} | |")
    for name, values in (("re-clustering, K doubling (2-means splits)", grow_s),
                         ("re-clustering at fixed K (k-means + Hungarian)", fixed_s)):
        if values:
            seconds = float(np.median(values))
            print(f"| {name} | {seconds:.2f} | {100 * seconds / (epoch_s + seconds):.1f} % |")
    print(f"With T = 2 a re-clustering runs every second epoch: about "
          f"{100 * np.median(fixed_s or grow_s) / (2 * epoch_s + np.median(fixed_s or grow_s)):.1f} % of training time.")


if __name__ == "__main__":
    main()
