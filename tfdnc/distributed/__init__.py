"""Scale: distribution strategies, global-batch gathering, collectives between workers, the multi-worker driver."""

from tfdnc.distributed.gather import all_gather_batch, num_replicas, replica_loss_scale
from tfdnc.distributed.strategy import (
    STRATEGIES,
    WorkerInfo,
    build_strategy,
    is_multi_worker,
    read_tf_config,
    synchronize_batchnorm,
    worker_info,
)

__all__ = [
    "STRATEGIES",
    "WorkerInfo",
    "all_gather_batch",
    "build_strategy",
    "is_multi_worker",
    "num_replicas",
    "read_tf_config",
    "replica_loss_scale",
    "synchronize_batchnorm",
    "worker_info",
]
