"""Importing TensorFlow without its start-up notices, for the commands that own their process.

TensorFlow 2.21 prints lines such as ``I0000 ... cudart_stub.cc:31] Could not
find cuda drivers`` and ``E0000 ... failed call to cuInit`` from C++ before
absl's logging is set up, so ``TF_CPP_MIN_LOG_LEVEL`` does not hide them: on
every CPU machine a one-line error of a ``tfdnc`` command came after four to
six lines of such noise. The commands import TensorFlow once through
`import_tensorflow_quietly`, which captures file descriptor 2 for the import
and writes back every line that is not one of these notices (a real error, a
Python warning). `import tfdnc` and library users are never affected.

Examples:
    >>> import_tensorflow_quietly()   # later `import tensorflow` is free and silent
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# Start-up notices of a CPU machine (no GPU, no CUDA driver) and of the oneDNN / CPU-feature banners.
STARTUP_NOTICES = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|cudart_stub\.cc"
    r"|failed call to cuInit|cuda_executor\.cc|cuda_platform\.cc|cuda_diagnostics|cpu_feature_guard\.cc"
    r"|To enable the following instructions|rebuild TensorFlow with the appropriate compiler flags"
    r"|Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered"
)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow and Keras, dropping the start-up notices from standard error.

    Does nothing if TensorFlow is already imported. With ``TF_CPP_MIN_LOG_LEVEL``
    set below 2 (a user asking for TensorFlow's messages) everything is shown.
    """
    if "tensorflow" in sys.modules:
        return
    if _level() < 2:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401

        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow

            # The CUDA platform is probed (cuInit) when the devices are first listed, not at import.
            tensorflow.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines()
                    if line.strip() and not STARTUP_NOTICES.search(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


def _level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0
