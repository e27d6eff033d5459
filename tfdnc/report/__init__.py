"""An HTML report of a training run: `python -m tfdnc.report RUN_DIR`.

The page (RUN_DIR/report/index.html, PNG figures beside it) shows the
run's settings, loss and Recall@K curves, K and the cluster sizes over
time, the masks as a heat map, the evaluation table, a 2-D map of test
embeddings coloured by class and by cluster, and retrieval examples.

Examples:
    >>> from tfdnc.report import build_report
    >>> build_report("runs/default", projection="pca")
    'runs/default/report/index.html'
"""

from tfdnc.utils.lazy import lazy_attributes

_LAZY = {"build_report": "tfdnc.report.builder", "RunInfo": "tfdnc.report.runinfo", "read_run": "tfdnc.report.runinfo"}


# Loaded on use, so `tfdnc report --help` does not import TensorFlow.
__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = ["RunInfo", "build_report", "read_run"]
