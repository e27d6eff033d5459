"""`python -m tfdnc.index ...` = `tfdnc index ...`."""

import sys

from tfdnc.index.cli import run

sys.exit(run())
