"""python -m tfdnc.exporting RUN_DIR --base BASE --name NAME [--gallery DIR] (= `tfdnc export`)."""

import sys

from tfdnc.exporting.cli import main

if __name__ == "__main__":
    sys.exit(main())
