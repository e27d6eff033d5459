"""The Divide & Conquer loop as parts with one job each, wired by one Keras callback.

- `phases`: `PhasePolicy`, what each epoch trains and when to re-cluster;
- `recluster`: `LocalReclusterer` and `plan_assignments`, features -> cluster ids;
- `distributed`: `DistributedReclusterer` (sharded embedding, chief clustering,
  broadcast) and `DistributedSchedule`;
- `cluster_state`: `ClusterState` generations and their `ClusterStateStore`;
- `schedule`: `DivideAndConquerSchedule`, the callback that wires them;
- `callbacks`: the run's other callbacks (non-finite loss guard, history file).
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
