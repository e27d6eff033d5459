"""Building `tf.distribute` strategies from a flag and `TF_CONFIG`.

Three kinds, chosen by `train.py --strategy`:

- "default": no distribution (one device; what TensorFlow picks).
- "mirrored": `tf.distribute.MirroredStrategy` over the GPUs of this host
  (or the listed devices); training goes through `model.fit`.
- "multi-worker": `tf.distribute.MultiWorkerMirroredStrategy` over the hosts
  listed in the `TF_CONFIG` environment variable; training goes through
  `tfdnc.distributed.driver` (Keras 3 `fit` cannot iterate the distributed
  dataset of that strategy).

`MultiWorkerMirroredStrategy` must be created before TensorFlow runs any op,
so `train.py` builds the strategy first.

Example:

```python
strategy = build_strategy("mirrored")
with strategy.scope():
    model = build_model(config, channels)
info = worker_info(strategy)   # WorkerInfo(index=0, count=1, is_chief=True)
```
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple, Sequence

import tensorflow as tf

# "default": one device; "mirrored": the GPUs of this host; "multi-worker":
# the hosts listed in TF_CONFIG (tfdnc.config.TrainConfig.strategy).
STRATEGIES = ("default", "mirrored", "multi-worker")

__all__ = [
    "STRATEGIES", "WorkerInfo", "build_strategy", "read_tf_config", "worker_info", "is_multi_worker",
    "synchronize_batchnorm",
]



class WorkerInfo(NamedTuple):
    """Where this process stands in the cluster."""

    index: int  # 0 .. count - 1, the chief first
    count: int  # number of worker processes
    is_chief: bool  # the one that clusters, writes checkpoints and exports


def read_tf_config(environ=None) -> dict:
    """The parsed `TF_CONFIG`, checked: raises ValueError naming what is wrong.

    Required: {"cluster": {"worker": ["host:port", ...], ["chief": [...]]},
    "task": {"type": "worker" | "chief", "index": i}}.
    """
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG")
    if not text:
        raise ValueError(
            "--strategy multi-worker needs the TF_CONFIG environment variable, e.g. "
            'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\''
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON: {exc}") from exc
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster.get("worker") and not cluster.get("chief"):
        raise ValueError(f"TF_CONFIG: 'cluster' must list 'worker' (and optionally 'chief') addresses, got {cluster!r}")
    unknown = sorted(set(cluster) - {"worker", "chief", "evaluator"})
    if unknown:
        raise ValueError(f"TF_CONFIG: MultiWorkerMirroredStrategy has no {unknown} tasks; use 'worker' and 'chief'")
    if len(cluster.get("chief", [])) > 1:
        raise ValueError(f"TF_CONFIG: at most one 'chief', got {cluster['chief']}")
    if not isinstance(task, dict) or task.get("type") not in ("worker", "chief"):
        raise ValueError(f"TF_CONFIG: 'task' must be {{'type': 'worker' | 'chief', 'index': i}}, got {task!r}")
    tasks = cluster.get(task["type"], [])
    index = task.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < len(tasks):
        raise ValueError(
            f"TF_CONFIG: task index {index!r} is out of range for the {len(tasks)} "
            f"'{task['type']}' address(es) {tasks}"
        )
    return config


def build_strategy(name: str = "default", devices: Sequence[str] | None = None) -> tf.distribute.Strategy:
    """The strategy for `--strategy NAME`.

    Args:
        name: "default", "mirrored" or "multi-worker".
        devices: for "mirrored", the devices to mirror over (default: all
            GPUs, or the CPU when there are none).
    """
    if name not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {STRATEGIES}, got {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    read_tf_config()
    if devices:
        raise ValueError("--strategy multi-worker uses every local GPU of each worker; `devices` is for 'mirrored'")
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def worker_info(strategy: tf.distribute.Strategy | None = None) -> WorkerInfo:
    """This process's worker index, the worker count and whether it is the chief.

    Workers are numbered as the strategy numbers its replicas: the chief (if
    the cluster has one) first, then the workers in `TF_CONFIG` order.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if not is_multi_worker(strategy):
        return WorkerInfo(0, 1, True)
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    chiefs = len(spec.get("chief", []))
    workers = len(spec.get("worker", []))
    task_type, task_id = resolver.task_type, int(resolver.task_id)
    index = task_id if task_type == "chief" else chiefs + task_id
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and chiefs == 0)
    return WorkerInfo(index, chiefs + workers, is_chief)


def synchronize_batchnorm(model, synchronized: bool = True) -> int:
    """Makes every BatchNormalization layer of `model` use global-batch statistics.

    Under a strategy each replica would otherwise normalise with the
    moments of its own slice, so the forward pass (and the loss) would
    differ from one device training on the global batch; Keras's
    `synchronized=True` all-reduces the moments instead. Returns how many
    layers were switched.
    """
    import keras

    count = 0
    for layer in _walk(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = bool(synchronized)
            count += 1
    return count


def _walk(layer):
    seen = set()
    stack = [layer]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(getattr(current, "layers", None) or [])
