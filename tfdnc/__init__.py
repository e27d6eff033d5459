"""tfdnc: deep metric learning by Divide & Conquer for TensorFlow / Keras 3."""

import os as _os

# Keras 3 picks its backend at import time; tfdnc is built on TensorFlow.
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's start-up INFO/WARNING lines (oneDNN, CUDA probing) bury the
# training output; set TF_CPP_MIN_LOG_LEVEL=0 to see them again.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
