"""Evaluation of embeddings: retrieval and clustering metrics, and a Keras callback."""

from tfdnc.evaluation.callback import RetrievalEvaluation
from tfdnc.evaluation.metrics import (
    ALL_METRICS,
    evaluate,
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
    "evaluate",
    "map_at_r",
    "marp",
    "nearest_neighbors",
    "nmi_and_f1",
    "pairwise_f1",
    "r_precision",
    "recall_at_k",
    "retrieval_metrics",
]
