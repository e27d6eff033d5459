"""The Divide & Conquer loop as parts with one job each, wired by one Keras callback.

- `phases`: `PhasePolicy`, what each epoch trains, when to re-cluster and at
  which K (`KStep`: the K rule's one place);
- `recluster`: the `Reclusterer` interface (features -> cluster ids), its
  `LocalReclusterer` and `DistributedReclusterer` (sharded embedding, chief
  clustering, broadcast), and `plan_assignments`;
- `distributed`: `DistributedSchedule`, the schedule of a multi-worker run;
- `cluster_state`: `ClusterState` generations and their `ClusterStateStore`
  (a run without backup generations, e.g. `model.fit` with BackupAndRestore);
- `schedule`: `DivideAndConquerSchedule`, the callback that wires them;
- `callbacks`: the run's other callbacks (non-finite loss guard, history file);
- `generations`: `GenerationStore`, backup generations committed whole (weights,
  clusters and random state of one epoch) or not at all;
- `backup`: `GenerationBackup` (the callback that commits them), `restore_latest`,
  `check_settings` (a resume's config against its generations), `save_model_atomic`,
  `FlushingTensorBoard`;
- `random_state`: the random state a resumed run needs to repeat the uninterrupted one;
- `lock`: `RunLock`, one training process per run directory;
- `faults`: test-only SIGKILL points (TFDNC_TEST_KILL_AT), reached through
  `GenerationBackup` alone.
"""

from tfdnc.training.cluster_state import ClusterState, ClusterStateStore
from tfdnc.training.phases import GROWTH, KStep, Phase, PhasePolicy
from tfdnc.training.recluster import (CLUSTER_FEATURES, Assignment, DistributedReclusterer, LocalReclusterer,
                                      Reclusterer, plan_assignments)
from tfdnc.training.schedule import DivideAndConquerSchedule

__all__ = [
    "CLUSTER_FEATURES",
    "GROWTH",
    "Assignment",
    "ClusterState",
    "ClusterStateStore",
    "DistributedReclusterer",
    "DivideAndConquerSchedule",
    "KStep",
    "LocalReclusterer",
    "Phase",
    "PhasePolicy",
    "Reclusterer",
    "plan_assignments",
]
