"""The layout of a run directory: every file `python train.py` leaves, named once.

Like `tfdnc.exporting.contract` does for exports, this module is the one
place the run directory's file names live; training writes them, and
evaluation, the report and the exporter read them through `RunDir`.

    RUN_DIR/config.json          the TrainConfig of the run
    RUN_DIR/model.keras          the trained model (keras.saving.load_model)
    RUN_DIR/checkpoints/         last.keras, written every epoch
    RUN_DIR/backup/gen-<N>/      generation N (N epochs done): weights, optimizer,
                                 cluster and random state and the run's settings, committed
                                 together (--resume); unloadable-gen-<N>/: one that did not
                                 load, set aside by --resume for a look
    RUN_DIR/clusters.npz         the newest committed cluster state, for reading (train.py: a copy of the backup generation's; model.fit with BackupAndRestore also keeps clusters.prev.npz)
    RUN_DIR/history.json         per-epoch logs, K and cluster sizes
    RUN_DIR/metrics.json         metrics before and after training
    RUN_DIR/skipped.txt          images and classes the run left out
    RUN_DIR/image_check.json     the image check's cache (files already decoded)
    RUN_DIR/resumes.json         every --resume: when, from which epoch, what it changed
    RUN_DIR/.lock                held by the process training here (pid inside)
    RUN_DIR/masks.npy            mask values (optional, read by the report)
    RUN_DIR/logs/                TensorBoard
    RUN_DIR/export/dnc/1/        the SavedModel for TensorFlow Serving
    RUN_DIR/report/              the HTML report (python -m tfdnc.report)

It imports nothing but the standard library and `tfdnc.utils`, so every layer
may use it.

Examples:
    >>> run = RunDir("runs/default")
    >>> run.config
    'runs/default/config.json'
    >>> sorted(run.metrics())     # {} until training wrote metrics.json
    [..., 'after', 'before', ...]
"""

from __future__ import annotations

import os

from tfdnc.utils import read_json, write_json

CONFIG = "config.json"
MODEL = "model.keras"
METRICS = "metrics.json"
HISTORY = "history.json"
SKIPPED = "skipped.txt"
IMAGE_CHECK = "image_check.json"
RESUMES = "resumes.json"
LOCK = ".lock"
COMMIT = "COMMIT"  # the last file of a complete backup generation (tfdnc.training.generations)
MASKS = "masks.npy"
CLUSTERS = "clusters.npz"
CLUSTERS_PREVIOUS = "clusters.prev.npz"
BACKUP = "backup"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.keras"
LOGS = "logs"
EXPORT = "export"
EXPORT_NAME = "dnc"  # RUN_DIR/export/<EXPORT_NAME>/<version>: the name export/models.config serves
REPORT = "report"


class RunDir:
    """The paths of one run directory, and reading / writing its JSON files.

    Args:
        path: the run directory (it need not exist yet).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)

    def __repr__(self) -> str:
        return f"RunDir({self.path!r})"

    def join(self, *names: str) -> str:
        return os.path.join(self.path, *names)

    # --- files and folders ---------------------------------------------------
    @property
    def config(self) -> str:
        return self.join(CONFIG)

    @property
    def model(self) -> str:
        return self.join(MODEL)

    @property
    def metrics_file(self) -> str:
        return self.join(METRICS)

    @property
    def history_file(self) -> str:
        return self.join(HISTORY)

    @property
    def skipped(self) -> str:
        return self.join(SKIPPED)

    @property
    def image_check(self) -> str:
        return self.join(IMAGE_CHECK)

    @property
    def resumes_file(self) -> str:
        return self.join(RESUMES)

    @property
    def masks(self) -> str:
        return self.join(MASKS)

    @property
    def clusters(self) -> str:
        return self.join(CLUSTERS)

    @property
    def clusters_previous(self) -> str:
        return self.join(CLUSTERS_PREVIOUS)

    @property
    def backup(self) -> str:
        return self.join(BACKUP)

    @property
    def checkpoints(self) -> str:
        return self.join(CHECKPOINTS)

    @property
    def last_checkpoint(self) -> str:
        return self.join(CHECKPOINTS, LAST_CHECKPOINT)

    @property
    def logs(self) -> str:
        return self.join(LOGS)

    @property
    def export_base(self) -> str:
        return self.join(EXPORT)

    @property
    def report(self) -> str:
        return self.join(REPORT)

    # --- state ------------------------------------------------------------------
    def holds_run(self) -> bool:
        """Whether a run has trained here: its backup holds a complete generation (gen-*/COMMIT).

        A run killed before its first backup was complete holds none, and a
        fresh run may start over it.
        """
        if not os.path.isdir(self.backup):
            return False
        return any(name.startswith("gen-") and os.path.isfile(os.path.join(self.backup, name, COMMIT))
                   for name in os.listdir(self.backup))

    def has_model(self) -> bool:
        return os.path.isfile(self.model)

    def create(self) -> "RunDir":
        """Makes the directory and its checkpoints folder; returns self."""
        os.makedirs(self.checkpoints, exist_ok=True)
        return self

    def metrics(self) -> dict:
        """metrics.json, or {} when there is none yet."""
        return read_json(self.metrics_file, what="run") if os.path.isfile(self.metrics_file) else {}

    def write_metrics(self, values: dict) -> None:
        write_json(self.metrics_file, values)

    def history(self) -> list:
        """history.json as written (a list of per-epoch dicts), or [] when there is none."""
        return read_json(self.history_file, what="run") if os.path.isfile(self.history_file) else []

    def write_history(self, records: list) -> None:
        write_json(self.history_file, records)

    def resumes(self) -> list:
        """resumes.json: one record per --resume (when, from which epoch, changed settings), or []."""
        return read_json(self.resumes_file, what="run") if os.path.isfile(self.resumes_file) else []

    def record_resume(self, record: dict) -> None:
        write_json(self.resumes_file, self.resumes() + [record])

    def write_skipped(self, lines: list[str]) -> None:
        with open(self.skipped, "w") as f:
            f.write("\n".join(lines) + "\n")
