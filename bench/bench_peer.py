"""tfdnc against pytorch-metric-learning: same data, backbone, batches and budget.

For every data set, loss and seed it trains

- the peer ("pml"): a torch replica of tfdnc's small_cnn + linear head (L2
  normalised), pytorch-metric-learning's loss with its usual miner
  (margin + DistanceWeightedMiner, multi_similarity + MultiSimilarityMiner,
  npair, proxy_anchor), `MPerClassSampler` P x M batches, Adam
  (bench/peer_torch.py); "pml-xbm" / "pml-xbm-authors" wrap the loss in pml's
  CrossBatchMemory (pml's semantics / the XBM authors' start step and batch loss);
- tfdnc, through `tfdnc.train.run(TrainConfig(...), export=False)`, in the
  configurations K = 1 ("k1"), D&C with fixed masks ("dnc-fixed") and with
  learnable masks ("dnc-learnable"), each also with Symm ("...-symm");

and scores every run's test embeddings with tfdnc's protocol code (Recall@1,
MAP@R, NMI of `tfdnc.evaluation.metrics`). Each run is its own subprocess
(fresh TensorFlow / torch state, one thread setting for both sides). Output:
a markdown table (mean ± sample std over seeds, plus seconds per training
step) on stdout, and every run plus the summary as JSON (`--out`).

Both sides are built from ONE plain dict of `TrainConfig` fields: the bench
defaults below, then `--set key=value` (JSON values; any TrainConfig field,
also ones added after this script), then the fields that define the
configuration (k_final=1 for "k1", mask_mode, symm).

Needs torch and pytorch-metric-learning for the peer: run it with the
bench-only virtualenv (docs/bench/peer.md). `--tfdnc-only` also runs with
tfdnc's own environment.

    # full run (both data sets, every loss and configuration, 3 seeds; rerun the same
    # line to continue an interrupted run)
    .bench-venv/bin/python bench/bench_peer.py --datasets mnist shapes --seeds 0 1 2 \\
        --out /tmp/tfdnc-bench-peer/bench-peer.json --resume
    # smoke run
    .bench-venv/bin/python bench/bench_peer.py --datasets mnist --losses margin --configs pml k1 \\
        --seeds 0 --epochs 1 --set steps_per_epoch=20
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.dirname(os.path.abspath(__file__))

LOSSES = ("margin", "multi_similarity", "npair", "proxy_anchor")
DEFAULT_LOSSES = ("margin", "multi_similarity", "npair")
# Losses the torch peer does not implement (tfdnc runs only).
TFDNC_ONLY_LOSSES: tuple[str, ...] = ()
PEER = "pml"
# Bench-level settings that are not TrainConfig fields: the cross-batch memory size
# (wrapped around the loss through loss_options, see `loss_options_for`).
XBM_SIZE = "xbm_size"
# further memory options, as bench settings "xbm_<option>" (e.g. xbm_start_step)
XBM_OPTIONS = ("start_step", "batch_loss", "memory_weight")
XBM_LOSSES = ("margin", "multi_similarity")  # of LOSSES, those a memory can wrap
# tfdnc configuration name -> the TrainConfig fields that define it. They win over
# --set (so --set k_final=4 changes the D&C runs, not "k1"); K for D&C and the rest
# of the schedule are TrainConfig's defaults unless --set.
TFDNC_CONFIGS: dict[str, dict] = {
    "k1": {"k_final": 1, "mask_mode": "fixed", "symmetrical": False},
    "k1-symm": {"k_final": 1, "mask_mode": "fixed", "symmetrical": True},
    "dnc-fixed": {"mask_mode": "fixed", "symmetrical": False},
    "dnc-fixed-symm": {"mask_mode": "fixed", "symmetrical": True},
    "dnc-learnable": {"mask_mode": "learnable", "symmetrical": False},
    "dnc-learnable-symm": {"mask_mode": "learnable", "symmetrical": True},
    # cross-batch memory of 512 entries per learner around the loss (docs/bench/losses.md)
    "k1-xbm": {"k_final": 1, "mask_mode": "fixed", "symmetrical": False, XBM_SIZE: 512},
    "dnc-fixed-xbm": {"mask_mode": "fixed", "symmetrical": False, XBM_SIZE: 512},
    # as the XBM authors' code: the batch's own loss plus the memory's, memory from step 150
    # (the end of the first K = 1 stage of the default schedule)
    "dnc-fixed-xbm-authors": {"mask_mode": "fixed", "symmetrical": False, XBM_SIZE: 512, "xbm_start_step": 150,
                              "xbm_batch_loss": True},
    "k1-xbm-authors": {"k_final": 1, "mask_mode": "fixed", "symmetrical": False, XBM_SIZE: 512, "xbm_start_step": 150,
                       "xbm_batch_loss": True},
}
# The peer's configurations (K = 1 only: pml has no D&C): "pml" the loss alone; "pml-xbm"
# pml's CrossBatchMemory of 512 (the pair of tfdnc's k1-xbm); "pml-xbm-authors" the same
# with the XBM authors' start step and batch loss (the pair of k1-xbm-authors).
PEER_CONFIGS: dict[str, dict] = {
    PEER: {},
    "pml-xbm": {XBM_SIZE: 512},
    "pml-xbm-authors": {XBM_SIZE: 512, "xbm_start_step": 150, "xbm_batch_loss": True},
}
CONFIGS = tuple(PEER_CONFIGS) + tuple(TFDNC_CONFIGS)
# Settings the bench fixes for both sides (TrainConfig's defaults for the rest):
# no augmentation (the full image, resized to image_size), evaluation only after
# the last epoch. image_size: the data set's own image side (see resolve_settings).
BENCH_DEFAULTS = {
    "crop_scale": [1.0, 1.0],
    "crop_ratio": [1.0, 1.0],
    "flip": False,
}
METRICS = (("recall@1", "R@1"), ("map@r", "MAP@R"), ("nmi", "NMI"))


# --- settings --------------------------------------------------------------------


def parse_set(items: list[str]) -> dict:
    """`key=value` pairs; a value is read as JSON when it parses (1e-4, true, [1, 1], null), else as text."""
    values = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if text.strip().lower() == "none":
            values[key] = None
            continue
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            values[key] = text
    return values


def resolve_settings(dataset: str, loss: str, config: str, seed: int, epochs: int | None, overrides: dict) -> dict:
    """The one dict both sides are built from (TrainConfig field names).

    Bench defaults < --epochs < --set < the configuration's defining fields;
    data set, loss and seed always from the job.
    """
    settings = {"dataset": dataset, "loss": loss, "seed": seed, **BENCH_DEFAULTS}
    if epochs is not None:
        settings["epochs"] = epochs
    settings.update(overrides)
    settings.update(TFDNC_CONFIGS.get(config) or PEER_CONFIGS.get(config, {}))
    settings["dataset"], settings["loss"], settings["seed"] = dataset, loss, seed
    settings.setdefault("eval_every", settings.get("epochs") or _config_default("epochs"))
    if loss == "proxy_anchor":
        # proxies learn faster than the network (the authors: 100x; 10x here, Adam)
        settings.setdefault("loss_learning_rate", 10 * (settings.get("learning_rate") or _config_default("learning_rate")))
    return settings


def _config_default(name: str):
    from tfdnc.config import TrainConfig

    field = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def full_settings(settings: dict, splits) -> dict:
    """`settings` completed with TrainConfig's defaults (validated), image_size from the data if unset.

    The loss options that depend on the data or the model (Proxy-Anchor's
    classes, the memory's embedding size and learners) are filled in here.
    """
    import tfdnc.config
    from tfdnc.config import TrainConfig

    if "proxy_anchor" not in tfdnc.config.LOSSES:
        # tfdnc.config's list of loss names predates Proxy-Anchor (the lead adds it on merge)
        tfdnc.config.LOSSES = tuple(tfdnc.config.LOSSES) + ("proxy_anchor",)
    values = dict(settings)
    xbm_size = values.pop(XBM_SIZE, None)
    xbm_options = {k: values.pop(f"xbm_{k}") for k in XBM_OPTIONS if f"xbm_{k}" in values}
    if "image_size" not in values and splits.train.images is not None:
        height, width = splits.train.images.shape[1:3]
        if height == width:
            values["image_size"] = int(height)
    values = TrainConfig.from_dict(values, source="bench_peer settings").to_dict()
    values["loss_options"] = loss_options_for(values, splits, xbm_size, xbm_options)
    return values


def loss_options_for(values: dict, splits, xbm_size: int | None, xbm_options: dict | None = None) -> dict:
    """The run's loss options plus what Proxy-Anchor / the memory need to know about data and model."""
    import numpy as np

    options = dict(values.get("loss_options") or {})
    model = {"embedding_dim": values["embedding_dim"], "num_learners": values["k_final"]}
    if values["loss"] == "proxy_anchor":
        options = {"num_classes": len(np.unique(splits.train.labels)), **model, **options}
    if xbm_size:
        options = {XBM_SIZE: int(xbm_size), **model, **(xbm_options or {}), **options}
    return options


def _emulate_learner_contract() -> None:
    """Until the model side lands: pass the batch's learner to the loss, reset it on re-clustering.

    The model side (issue 15's contract) calls
    `loss.compute_loss_and_stats(labels, embeddings, learner=cluster)` and
    `loss.on_clusters_changed()`; this tfdnc's model does neither yet, so the
    bench wraps `DivideAndConquerModel._learner_loss` (learner = the batch's
    cluster, None in the full-embedding phase and in evaluation) and
    `DivideAndConquerSchedule._set` (every new cluster assignment). Skipped
    when the model already has `on_clusters_changed`.
    """
    from tfdnc.model import DivideAndConquerModel

    if hasattr(DivideAndConquerModel, "on_clusters_changed") or hasattr(DivideAndConquerModel, "_bench_shim"):
        return
    from tfdnc.training import DivideAndConquerSchedule

    learner_loss, set_clusters = DivideAndConquerModel._learner_loss, DivideAndConquerSchedule._set

    def _learner_loss(self, images, labels, cluster, training):
        loss = self.metric_loss
        compute = type(loss).compute_loss_and_stats
        learner = None if (self._full_embedding or not training) else cluster
        loss.compute_loss_and_stats = lambda y, z: compute(loss, y, z, learner=learner, training=training)
        try:
            return learner_loss(self, images, labels, cluster, training)
        finally:
            del loss.compute_loss_and_stats

    def _set(self, assignments, k):
        set_clusters(self, assignments, k)
        getattr(self.model.metric_loss, "on_clusters_changed", lambda: None)()

    DivideAndConquerModel._learner_loss, DivideAndConquerSchedule._set = _learner_loss, _set
    DivideAndConquerModel._bench_shim = True


# --- one run (in a subprocess) -------------------------------------------------------


class _StepTimer:
    """Mixed into tfdnc.train.HistoryWriter: wall time of each epoch's training steps.

    From the start of the epoch's first batch to the end of its last one (the
    train function incl. tf.data input and tracing; not the epoch-begin
    re-clustering nor the epoch-end evaluation / checkpoints).
    """

    def _timer_state(self):
        if not hasattr(self, "_bench_epochs"):
            self._bench_epochs, self._bench_t0, self._bench_t1, self._bench_n = [], None, None, 0
            self._bench_c0 = self._bench_c1 = None
        return self

    def on_epoch_begin(self, epoch, logs=None):
        self._timer_state()
        self._bench_t0, self._bench_n = None, 0
        parent = getattr(super(), "on_epoch_begin", None)
        if parent:
            parent(epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._timer_state()
        if self._bench_t0 is None:
            self._bench_t0 = time.perf_counter()
            self._bench_c0 = time.process_time()

    def on_train_batch_end(self, batch, logs=None):
        self._timer_state()
        self._bench_t1 = time.perf_counter()
        self._bench_c1 = time.process_time()
        self._bench_n += 1

    def on_epoch_end(self, epoch, logs=None):
        self._timer_state()
        if self._bench_t0 is not None:
            self._bench_epochs.append((self._bench_t1 - self._bench_t0, self._bench_n, self._bench_c1 - self._bench_c0))
            STEP_TIMES[:] = self._bench_epochs
        # the epoch's test metrics (logged by RetrievalEvaluation, which runs before this callback)
        # and the masks at the epoch's end
        record = {"epoch": int(epoch) + 1}
        for key, _ in METRICS:
            if logs and f"val_{key}" in logs:
                record[key] = float(logs[f"val_{key}"])
        masks = getattr(self.model, "masks", None)
        if masks is not None and getattr(masks, "mode", None) == "learnable":
            values = masks.mask_values()
            record.update(mask_statistics(values))
            FINAL_MASKS[:] = values.tolist()
        EPOCH_RECORDS.append(record)
        super().on_epoch_end(epoch, logs)


# per epoch: (wall seconds, steps, CPU seconds of the whole process, all its threads: tf.data's included)
STEP_TIMES: list[tuple[float, int, float]] = []
EPOCH_RECORDS: list[dict] = []
FINAL_MASKS: list[list[float]] = []  # the learnable masks (relu) after the last epoch, K x d
# An entry is switched off below this fraction of its mask's largest entry (the rule of
# SubspaceMasks.statistics where tfdnc has it); "mask_zero_share": entries exactly 0 after the relu.
MASK_OFF_BELOW = 0.1


def mask_statistics(masks) -> dict:
    """Learnable masks (K, d) after relu: mean pairwise cosine over i < j (absent for K = 1), the share of
    switched-off entries (< MASK_OFF_BELOW x their mask's largest) and of zero entries, over all K x d."""
    import numpy as np

    masks = np.asarray(masks, np.float64)
    k = len(masks)
    peak = masks.max(axis=1, keepdims=True)
    out = {"mask_k": k, "mask_off_share": float(np.mean(masks < MASK_OFF_BELOW * peak)),
           "mask_zero_share": float(np.mean(masks <= 0.0))}
    if k > 1:
        unit = masks / np.maximum(np.linalg.norm(masks, axis=1, keepdims=True), 1e-12)
        cosine = unit @ unit.T
        out["mask_cosine"] = float(cosine[np.triu_indices(k, 1)].mean())
    return out


def run_tfdnc(settings: dict, splits, run_root: str, keep: bool) -> dict:
    import tfdnc.train as tfdnc_train
    from tfdnc.config import TrainConfig

    values = full_settings(settings, splits)
    _emulate_learner_contract()
    run_dir = tempfile.mkdtemp(prefix=f"{settings['dataset']}-{settings['loss']}-s{settings['seed']}-", dir=run_root)
    values["run_dir"] = run_dir
    config = TrainConfig.from_dict(values, source="bench_peer settings")
    timed = hasattr(tfdnc_train, "HistoryWriter")
    if timed:
        tfdnc_train.HistoryWriter = type("TimedHistoryWriter", (_StepTimer, tfdnc_train.HistoryWriter), {})
    try:
        metrics = tfdnc_train.run(config, export=False, verbose=0)
    finally:
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    epochs = list(STEP_TIMES) if timed else []
    return {
        "after": metrics["after"],
        "epoch_results": list(EPOCH_RECORDS),
        "masks_final": list(FINAL_MASKS) or None,  # per epoch: test metrics where evaluated, learnable masks' statistics
        "K": metrics.get("K"),
        "train_seconds": metrics.get("train_seconds"),  # all of model.fit, callbacks included
        "steps": sum(n for _, n, _ in epochs) or None,
        "epoch_loop_seconds": [s for s, _, _ in epochs],
        "epoch_loop_cpu_seconds": [c for _, _, c in epochs],
        "epoch_steps": [n for _, n, _ in epochs],
        "run_dir": run_dir if keep else None,
        "settings": values,
        "xbm_bytes": _memory_bytes(values["loss_options"]),
    }


def _memory_bytes(options: dict) -> int | None:
    """Bytes of the cross-batch memory's variables (None without one)."""
    if not options.get(XBM_SIZE):
        return None
    from tfdnc.losses import CrossBatchMemory, TripletLoss

    memory = CrossBatchMemory(TripletLoss(), memory_size=options[XBM_SIZE], embedding_dim=options["embedding_dim"],
                              num_learners=options["num_learners"])
    return memory.memory_bytes()


def worker(job: dict) -> dict:
    threads = int(job["threads"])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    from tfdnc.datasets import load_dataset

    settings = job["settings"]
    start = time.perf_counter()
    splits = load_dataset(settings["dataset"], settings.get("data_dir"), use_boxes=bool(settings.get("use_boxes")))
    if job["config"] in PEER_CONFIGS:
        sys.path.insert(0, BENCH)
        import peer_torch
        import torch

        torch.set_num_threads(threads)
        values = full_settings(settings, splits)
        result = peer_torch.train_peer(values, splits)
        result["settings"] = values
    else:
        result = run_tfdnc(settings, splits, job["run_root"], job["keep_runs"])
    result["wall_seconds"] = time.perf_counter() - start
    result["cpu_seconds"] = time.process_time()  # all threads of this run's process, start-up included
    return result


# --- orchestration ---------------------------------------------------------------


def job_key(dataset, loss, config, seed) -> str:
    return f"{dataset}/{loss}/{config}/{seed}"


def summarise_run(result: dict) -> dict:
    """Test-set metrics (first evaluation set) and step times of one run."""
    results = result["after"]["results"]
    first = results.get("test") or next(iter(results.values()))
    epochs = result.get("epoch_loop_seconds") or []
    counts = result.get("epoch_steps") or [result["steps"] // max(len(epochs), 1)] * len(epochs)
    out = {key: float(first[key]) for key, _ in METRICS if key in first}
    if epochs and sum(counts):
        out["step_s"] = sum(epochs) / sum(counts)
        if len(epochs) > 1 and sum(counts[1:]):
            out["steady_step_s"] = sum(epochs[1:]) / sum(counts[1:])
            cpu = result.get("epoch_loop_cpu_seconds") or []
            if len(cpu) == len(epochs):  # CPU seconds per step: what load on the machine does not inflate
                out["steady_step_cpu_s"] = sum(cpu[1:]) / sum(counts[1:])
    if result.get("train_seconds") and result.get("steps"):
        out["fit_step_s"] = result["train_seconds"] / result["steps"]
    out["wall_seconds"] = result.get("wall_seconds")
    out["cpu_seconds"] = result.get("cpu_seconds")
    out.update(epoch_summary(result.get("epoch_results") or [], out))
    if result.get("xbm_bytes"):
        out["xbm_bytes"] = result["xbm_bytes"]
    return out


LAST_EPOCHS = 3  # "last 3": the mean of the test metrics after the run's last three epochs
SWING_EPOCHS = 5  # the swing: over the last five evaluated epochs (as bench/bench_method.py)


def epoch_summary(records: list[dict], final: dict) -> dict:
    """From per-epoch records: the last-3-epoch means, the best epoch's MAP@R (and final minus best), and the
    learnable masks' statistics at the end. Empty where the last epochs were not all evaluated."""
    out = {}
    evaluated = [r for r in records if "map@r" in r]
    last_epoch = max((r["epoch"] for r in records), default=0)
    tail = [r for r in evaluated if r["epoch"] > last_epoch - LAST_EPOCHS]
    if len(tail) == LAST_EPOCHS:
        for key, _ in METRICS:
            if all(key in r for r in tail):
                out[f"last3_{key}"] = sum(r[key] for r in tail) / LAST_EPOCHS
    recent = [r["map@r"] for r in evaluated if r["epoch"] > last_epoch - SWING_EPOCHS]
    if len(recent) == SWING_EPOCHS:  # the epoch-to-epoch swing: mean |change| of MAP@R over the last epochs
        out["swing_map@r"] = sum(abs(b - a) for a, b in zip(recent, recent[1:])) / (SWING_EPOCHS - 1)
    if evaluated and "map@r" in final:
        best = max(evaluated, key=lambda r: r["map@r"])
        out["best_map@r"], out["best_epoch"] = best["map@r"], best["epoch"]
        out["final_minus_best_map@r"] = final["map@r"] - best["map@r"]
    masked = [r for r in records if "mask_off_share" in r]
    if masked:
        out["mask_off_share"] = masked[-1]["mask_off_share"]
        if "mask_zero_share" in masked[-1]:
            out["mask_zero_share"] = masked[-1]["mask_zero_share"]
        if "mask_cosine" in masked[-1]:
            out["mask_cosine"] = masked[-1]["mask_cosine"]
    return out


def aggregate(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarise(runs: dict) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for key, record in runs.items():
        if "summary" not in record:
            continue
        dataset, loss, config, _ = key.split("/")
        groups.setdefault((dataset, loss, config), []).append(record["summary"])
    rows = []
    order = {c: i for i, c in enumerate(CONFIGS)}
    for (dataset, loss, config), items in sorted(groups.items(), key=lambda kv: (*kv[0][:2], order.get(kv[0][2], 99))):
        row = {"dataset": dataset, "loss": loss, "config": config, "seeds": len(items)}
        for key in [k for k, _ in METRICS] + ["step_s", "steady_step_s", "fit_step_s", "wall_seconds", "xbm_bytes"]:
            values = [i[key] for i in items if i.get(key) is not None]
            if values:
                row[key] = aggregate(values)
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    head = (["data set", "loss", "side / config", "seeds"] + [t for _, t in METRICS]
            + ["s/step", "s/step (epochs 2+)", "s/step (all of fit)", "XBM MiB"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        peer = row["config"] in PEER_CONFIGS
        side = f"pytorch-metric-learning{row['config'][len(PEER):]}" if peer else f"tfdnc {row['config']}"
        cells = [row["dataset"], row["loss"], side, str(row["seeds"])]
        for key, _ in METRICS:
            a = row.get(key)
            cells.append("-" if a is None else f"{100 * a['mean']:.2f} ± {100 * a['std']:.2f}")
        for key in ("step_s", "steady_step_s", "fit_step_s"):
            a = row.get(key)
            cells.append("-" if a is None else f"{a['mean']:.4f}")
        a = row.get("xbm_bytes")
        cells.append("-" if a is None else f"{a['mean'] / 2**20:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Test set, %: mean ± sample standard deviation over seeds (min / max in the JSON). "
                 "s/step: wall time of the training loop / steps (tfdnc: first batch start to last batch end "
                 "of each epoch; peer: each epoch's loop); epochs 2+: without the first epoch (tracing); "
                 "all of fit: tfdnc's train_seconds (model.fit with re-clustering, evaluation, checkpoints) / steps.")
    return "\n".join(lines)


def run_job(job: dict, log_dir: str) -> dict:
    key = job["key"]
    log_path = os.path.join(log_dir, key.replace("/", "_") + ".log")
    result_path = os.path.join(log_dir, key.replace("/", "_") + ".json")
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job), "--worker-out", result_path]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
           "OMP_NUM_THREADS": str(job["threads"]), "PYTHONHASHSEED": str(job["settings"]["seed"])}
    load_before = os.getloadavg()[0]
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    load = {"loadavg_1min_before": load_before, "loadavg_1min_after": os.getloadavg()[0]}
    if code != 0 or not os.path.exists(result_path):
        with open(log_path) as f:
            tail = f.read()[-3000:]
        return {"error": f"exit {code}", "log": log_path, "log_tail": tail, **load}
    with open(result_path) as f:
        return {**json.load(f), **load}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "shapes"])
    parser.add_argument("--losses", nargs="+", default=list(DEFAULT_LOSSES), choices=LOSSES,
                        help="proxy_anchor is not in the default list; the XBM configurations take margin and "
                             "multi_similarity only")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS,
                        help=f"{', '.join(PEER_CONFIGS)}: the pytorch-metric-learning peer; the others are tfdnc's")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every run (default: TrainConfig's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a TrainConfig field for both sides (JSON value), e.g. --set steps_per_epoch=50 "
                             "--set 'loss_options={\"beta\": 1.0}'; repeatable")
    side = parser.add_mutually_exclusive_group()
    side.add_argument("--peer-only", action="store_true", help="only the pytorch-metric-learning runs")
    side.add_argument("--tfdnc-only", action="store_true", help="only the tfdnc runs")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op threads of both torch and TensorFlow (default: all cores)")
    parser.add_argument("--out", default=None,
                        help="JSON of every run and the summary (default: RUN_ROOT/bench-peer.json)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in --out with the same settings and do the rest")
    parser.add_argument("--run-root", default=os.path.join(tempfile.gettempdir(), "tfdnc-bench-peer"),
                        help="where tfdnc run directories and per-run logs go")
    parser.add_argument("--keep-runs", action="store_true", help="keep tfdnc's run directories")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        result = worker(json.loads(args.worker))
        tmp = args.worker_out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1, default=float)
        os.replace(tmp, args.worker_out)
        return 0

    configs = [c for c in args.configs
               if not (args.peer_only and c not in PEER_CONFIGS) and not (args.tfdnc_only and c in PEER_CONFIGS)]
    if not configs:
        raise SystemExit("no configuration left to run (check --configs with --peer-only / --tfdnc-only)")
    if set(configs) & set(PEER_CONFIGS):
        try:
            import pytorch_metric_learning  # noqa: F401
            import torch  # noqa: F401
        except ImportError:
            raise SystemExit(f"the '{PEER}' runs need torch and pytorch-metric-learning, which {sys.executable} "
                             "lacks: run with .bench-venv/bin/python (docs/bench/peer.md) or pass --tfdnc-only")
    overrides = parse_set(args.overrides)
    from tfdnc.config import TrainConfig

    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise SystemExit(f"--set: {unknown} are not TrainConfig fields")
    fixed = sorted(set(overrides) & {"dataset", "loss", "seed", "run_dir"})
    if fixed:
        raise SystemExit(f"--set: {fixed} come from --datasets / --losses / --seeds / --run-root, not --set")
    args.out = args.out or os.path.join(args.run_root, "bench-peer.json")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    from tfdnc.datasets import DATASETS

    unknown = [d for d in args.datasets if d not in DATASETS]
    if unknown:
        raise SystemExit(f"unknown data set(s) {unknown}; this tfdnc has {sorted(DATASETS)}")

    runs: dict = {}
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            runs = {k: v for k, v in json.load(f).get("runs", {}).items() if "summary" in v}
    log_dir = os.path.join(args.run_root, "logs")
    os.makedirs(log_dir, exist_ok=True)
    # Seed-major with the sides interleaved, so machine-load drift hits them alike.
    jobs = []
    for dataset in args.datasets:
        for loss in args.losses:
            for seed in args.seeds:
                for config in configs:
                    defining = TFDNC_CONFIGS.get(config) or PEER_CONFIGS.get(config, {})
                    if (config in PEER_CONFIGS and loss in TFDNC_ONLY_LOSSES) or (
                            XBM_SIZE in defining and loss not in XBM_LOSSES):
                        continue  # no peer for it / not pair-based: no memory around it
                    key = job_key(dataset, loss, config, seed)
                    settings = resolve_settings(dataset, loss, config, seed, args.epochs, overrides)
                    if key in runs and runs[key].get("job_settings") == settings:
                        continue  # --resume: done with these very settings
                    jobs.append({"key": key, "config": config, "settings": settings, "threads": args.threads,
                                 "run_root": args.run_root, "keep_runs": args.keep_runs})
    start = time.perf_counter()
    for i, job in enumerate(jobs):
        t0 = time.perf_counter()
        result = run_job(job, log_dir)
        if "error" not in result:
            result["summary"] = summarise_run(result)
            s = result["summary"]
            note = (f"R@1 {100 * s.get('recall@1', float('nan')):.2f}  MAP@R {100 * s.get('map@r', float('nan')):.2f}"
                    f"  s/step {s.get('step_s', float('nan')):.4f}")
        else:
            note = f"FAILED ({result['error']}; log {result['log']})"
        print(f"[{i + 1}/{len(jobs)}] {job['key']}: {note}  ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr, flush=True)
        result["job_settings"] = job["settings"]
        runs[job["key"]] = result
        _write(args, runs, time.perf_counter() - start)
    rows = _write(args, runs, time.perf_counter() - start)
    print(markdown(rows))
    failed = [k for k, v in runs.items() if "error" in v]
    if failed:
        print(f"\n{len(failed)} run(s) failed: {', '.join(failed)} (logs in {log_dir})", file=sys.stderr)
    return 1 if failed else 0


def _write(args, runs: dict, seconds: float) -> list[dict]:
    rows = summarise(runs)
    payload = {
        "command": " ".join([os.path.relpath(sys.executable, ROOT)] + [os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "TF_CPP_MIN_LOG_LEVEL")},
        "seconds": seconds,
        "spread": "std = sample standard deviation over seeds (ddof 1); min / max also given",
        "summary": rows,
        "runs": runs,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=float)
    os.replace(tmp, args.out)
    return rows


if __name__ == "__main__":
    sys.exit(main())
