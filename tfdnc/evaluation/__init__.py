"""Evaluation of embeddings: metrics, exact neighbours, the benchmark protocols, and a Keras callback.

- `metrics`: `compute_metrics` (arrays -> Recall@K, MAP@R, mARP, NMI, F1);
- `neighbors`: `nearest_neighbors`, the one exact top-k engine;
- `embedding`: `embed_images` / `embed_image_set`, the one way images are embedded;
- `protocols`: `run_protocol` (a data set's evaluation sets -> `ProtocolResult`);
- `callback`: `RetrievalEvaluation` and `evaluation_due`, the one "when" rule.
"""

from tfdnc.evaluation.callback import RetrievalEvaluation, evaluation_due
from tfdnc.evaluation.metrics import (
    ALL_METRICS,
    compute_metrics,
    map_at_r,
    marp,
    nmi_and_f1,
    pairwise_f1,
    r_precision,
    recall_at_k,
    retrieval_metrics,
)
from tfdnc.evaluation.neighbors import nearest_neighbors

__all__ = [
    "ALL_METRICS",
    "RetrievalEvaluation",
    "compute_metrics",
    "evaluation_due",
    "map_at_r",
    "marp",
    "nearest_neighbors",
    "nmi_and_f1",
    "pairwise_f1",
    "r_precision",
    "recall_at_k",
    "retrieval_metrics",
]
