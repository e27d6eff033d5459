"""Export trained tfdnc models for TensorFlow Serving, plus the deployment kit.

Run `python -m export RUN_DIR --base BASE --name NAME [--gallery DIR]`. This
folder also holds the files to serve the exports: `models.config`,
`batching_parameters.txt`, `docker-compose.yml` (see README.md here). The
logic lives in `tfdnc.exporting`, re-exported below.
"""

from tfdnc.exporting import (  # noqa: F401
    Gallery,
    export_checkpoint,
    export_model,
    export_run,
    list_versions,
    next_version,
)

__all__ = ["Gallery", "export_checkpoint", "export_model", "export_run", "list_versions", "next_version"]
