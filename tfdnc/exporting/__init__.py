"""Export trained embedding models as SavedModels for TensorFlow Serving.

`tfdnc.exporting.contract` (signature and tensor names) and the signature
declarations (`signature`, `endpoints`: one `Signature` class per export
signature, and the registry) import no TensorFlow; the exporter itself is
loaded on first use, so clients that only need the names stay light.

Run `python -m tfdnc.exporting RUN_DIR --base BASE --name NAME` (= `tfdnc export`).

Examples:
    >>> from tfdnc.exporting import export_run
    >>> path = export_run("runs/default", base="exports", name="dnc")  # exports/dnc/<next version>
"""

from __future__ import annotations

from tfdnc.utils.lazy import lazy_attributes

_LAZY = {
    "export_checkpoint": "tfdnc.exporting.exporter",
    "export_model": "tfdnc.exporting.exporter",
    "export_run": "tfdnc.exporting.exporter",
    "load_keras_model": "tfdnc.exporting.exporter",
    "Gallery": "tfdnc.exporting.gallery",
    "Signature": "tfdnc.exporting.signature",
    "TensorInfo": "tfdnc.exporting.signature",
    "register_signature": "tfdnc.exporting.endpoints",
    "registered_signatures": "tfdnc.exporting.endpoints",
    "unregister_signature": "tfdnc.exporting.endpoints",
    "get_signature": "tfdnc.exporting.endpoints",
    "list_versions": "tfdnc.exporting.versions",
    "next_version": "tfdnc.exporting.versions",
    "resolve_version_dir": "tfdnc.exporting.versions",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_attributes(__name__, _LAZY)
