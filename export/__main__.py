"""python -m export RUN_DIR --base BASE --name NAME [--gallery DIR]"""

import sys

from tfdnc.exporting.cli import main

if __name__ == "__main__":
    sys.exit(main())
