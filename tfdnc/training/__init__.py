"""The Divide & Conquer loop as parts with one job each, wired by one Keras callback.

- `phases`: `PhasePolicy`, what each epoch trains and when to re-cluster;
- `recluster`: `LocalReclusterer` and `plan_assignments`, features -> cluster ids;
- `distributed`: `DistributedReclusterer` (sharded embedding, chief clustering,
  broadcast) and `DistributedSchedule`;
- `cluster_state`: `ClusterState` generations and their `ClusterStateStore`;
- `schedule`: `DivideAndConquerSchedule`, the callback that wires them;
- `callbacks`: the run's other callbacks (non-finite loss guard, history file);
- `generations`: `GenerationStore`, backup generations committed whole (weights,
  clusters and random state of one epoch) or not at all;
- `backup`: `GenerationBackup` (the callback that commits them), `restore_latest`,
  `check_settings` (a resume's config against its generations), `save_model_atomic`,
  `FlushingTensorBoard`;
- `random_state`: the random state a resumed run needs to repeat the uninterrupted one;
- `lock`: `RunLock`, one training process per run directory;
- `faults`: test-only SIGKILL points (TFDNC_TEST_KILL_AT).
"""

from tfdnc.training.cluster_state import ClusterState, ClusterStateStore
from tfdnc.training.phases import GROWTH, Phase, PhasePolicy
from tfdnc.training.recluster import CLUSTER_FEATURES, Assignment, LocalReclusterer, plan_assignments
from tfdnc.training.schedule import DivideAndConquerSchedule

__all__ = [
    "CLUSTER_FEATURES",
    "GROWTH",
    "Assignment",
    "ClusterState",
    "ClusterStateStore",
    "DivideAndConquerSchedule",
    "LocalReclusterer",
    "Phase",
    "PhasePolicy",
    "plan_assignments",
]
