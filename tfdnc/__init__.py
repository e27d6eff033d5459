"""tfdnc: deep metric learning by Divide & Conquer for TensorFlow / Keras 3.

Importing tfdnc imports neither TensorFlow nor Keras; the names below load
their module on first use:

Examples:
    >>> import tfdnc
    >>> model = tfdnc.load_model("runs/default/model.keras")   # no other import needed
    >>> loss = tfdnc.losses.MultiSimilarityLoss()
    >>> train = keras.utils.image_dataset_from_directory("photos/", image_size=(32, 32), verbose=False)
    >>> batches = tfdnc.data.ClusterBatches(train, classes_per_batch=4, images_per_class=4)

Environment: tfdnc runs on Keras's TensorFlow backend. If `KERAS_BACKEND` is
unset, importing tfdnc sets it to "tensorflow" (Keras reads it when it is
first imported); any other value is refused with an ImportError. Nothing
else is changed: TensorFlow's start-up log lines are silenced only by the
`tfdnc` / `python train.py` commands, and only when `TF_CPP_MIN_LOG_LEVEL`
is unset.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"


def _check_backend() -> None:
    backend = _os.environ.get("KERAS_BACKEND") or None  # empty reads as unset, as in Keras
    keras = _sys.modules.get("keras")
    if keras is not None and backend is None:
        # Keras came first (unset backend): it chose TensorFlow, its default.
        backend = getattr(getattr(keras, "backend", None), "backend", lambda: "tensorflow")()
    if backend is not None and backend != "tensorflow":
        raise ImportError(
            f"tfdnc needs Keras's TensorFlow backend, but KERAS_BACKEND={backend!r}; "
            "set KERAS_BACKEND=tensorflow (or leave it unset) before importing tfdnc or keras"
        )
    if backend is None:
        _os.environ["KERAS_BACKEND"] = "tensorflow"  # documented above


_check_backend()

from tfdnc.utils.lazy import lazy_attributes as _lazy_attributes  # noqa: E402 (after the backend check)

# name -> module that holds it; loaded on first access (PEP 562), so that
# `import tfdnc` stays cheap and the package imports no layer above it.
_LAZY_MODULES = ("backbones", "data", "losses", "miners", "model")
_LAZY_NAMES = {
    "DivideAndConquerModel": "tfdnc.model",
    "load_model": "tfdnc.model",
    "ClusterBatches": "tfdnc.data.batches",
    "build_backbone": "tfdnc.backbones",
}

__getattr__ = _lazy_attributes(__name__, _LAZY_NAMES, modules=_LAZY_MODULES)


def __dir__():
    return sorted([*globals(), *_LAZY_MODULES, *_LAZY_NAMES])
