"""Input pipeline: image transforms, class-balanced cluster batches, tf.data.

`tfdnc.data.ClusterBatches` (in `tfdnc.data.batches`) makes Divide &
Conquer batches from a folder dataset, a `tf.data.Dataset` or arrays.
"""


def __getattr__(name: str):
    # Loaded on use: the package stays importable without TensorFlow.
    if name == "ClusterBatches":
        from tfdnc.data.batches import ClusterBatches

        return ClusterBatches
    raise AttributeError(f"module 'tfdnc.data' has no attribute {name!r}")
