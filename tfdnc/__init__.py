"""tfdnc: deep metric learning by Divide & Conquer for TensorFlow / Keras 3."""

import os as _os

# Keras 3 picks its backend at import time; tfdnc is built on TensorFlow.
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"
