"""The evaluation protocols, under the name user code has always imported them by.

They live in `tfdnc.evaluation.protocols`; this module only hands the names on.
"""

from tfdnc.evaluation.protocols import (
    METRICS,
    PROTOCOLS,
    Protocol,
    ProtocolResult,
    embed_evaluation_sets,
    embed_once,
    embedded_arrays,
    evaluate_dataset,
    evaluate_embedded,
    get_protocol,
    run_protocol,
)

__all__ = [
    "METRICS",
    "PROTOCOLS",
    "Protocol",
    "ProtocolResult",
    "embed_evaluation_sets",
    "embed_once",
    "embedded_arrays",
    "evaluate_dataset",
    "evaluate_embedded",
    "get_protocol",
    "run_protocol",
]
