"""Reading what a training run left in its directory."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import numpy as np

from tfdnc.rundir import RunDir
from tfdnc.utils import read_json


@dataclass
class RunInfo:
    """The parts of a run directory the report uses; absent parts are None.

    Attributes:
        run_dir: the directory.
        config: the run's `TrainConfig` (from config.json), or None.
        config_values: config.json as a plain dict (also for unknown fields).
        history: per-epoch dicts (history.json), oldest first.
        metrics: metrics.json (before / after evaluation), or None.
        masks: (K, d) mask values from masks.npy, or None.
        model_path: RUN_DIR/model.keras if present.
    """

    run_dir: str
    config: object | None = None
    config_values: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    metrics: dict | None = None
    masks: np.ndarray | None = None
    model_path: str | None = None

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(epochs, values) of a scalar history key, skipping epochs without it."""
        epochs, values = [], []
        for index, entry in enumerate(self.history):
            value = entry.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
                epochs.append(entry.get("epoch", index) if isinstance(entry.get("epoch"), int) else index)
                values.append(float(value))
        return np.array(epochs), np.array(values)

    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for entry in self.history:
            for key in entry:
                seen.setdefault(key, None)
        return list(seen)


def read_run(run_dir: str) -> RunInfo:
    """Reads config.json, history.json, metrics.json and masks.npy where present.

    Raises:
        FileNotFoundError: `run_dir` is not a folder.
        ValueError: a file is there but unreadable (naming the file).
    """
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"report: run directory {run_dir!r} not found")
    info = RunInfo(run_dir=run_dir)
    run = RunDir(run_dir)
    # A folder with none of a run's files is a wrong path, not an empty run: a
    # report of it would be a page of "Skipped" written into someone's folder.
    if not any(os.path.isfile(p) for p in (run.config, run.history_file, run.metrics_file, run.masks, run.model)):
        raise FileNotFoundError(
            f"report: {run_dir!r} is not a training run (it has no {os.path.basename(run.config)}, "
            f"{os.path.basename(run.history_file)}, {os.path.basename(run.metrics_file)} or "
            f"{os.path.basename(run.model)}); give the directory `tfdnc train` wrote")
    config_path = run.config
    if os.path.isfile(config_path):
        info.config_values = read_json(config_path, what="report")
        from tfdnc.config import TrainConfig

        # Fields this version does not know (a newer run) are shown, not fatal.
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        try:
            info.config = TrainConfig.from_dict(
                {k: v for k, v in info.config_values.items() if k in known}, source=config_path
            )
        except (TypeError, ValueError):
            info.config = None  # inconsistent values: still show them
    if os.path.isfile(run.history_file):
        info.history = normalise_history(read_json(run.history_file, what="report"), run.history_file)
    if os.path.isfile(run.metrics_file):
        info.metrics = read_json(run.metrics_file, what="report")
    masks_path = run.masks
    if os.path.isfile(masks_path):
        try:
            info.masks = np.atleast_2d(np.load(masks_path, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise ValueError(f"report: cannot read {masks_path!r}: {exc}") from exc
    info.model_path = run.model if run.has_model() else None
    return info


def normalise_history(history, source: str = "history") -> list[dict]:
    """A list of per-epoch dicts, from either that or Keras' dict of lists."""
    if isinstance(history, dict) and "epochs" in history and isinstance(history["epochs"], list):
        history = history["epochs"]
    if isinstance(history, dict):
        lengths = {len(v) for v in history.values() if isinstance(v, list)}
        if len(lengths) > 1:
            raise ValueError(f"report: {source}: per-key lists of different lengths {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        return [{k: v[i] for k, v in history.items() if isinstance(v, list)} for i in range(n)]
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        raise ValueError(f"report: {source}: expected a list of per-epoch objects")
    return history
