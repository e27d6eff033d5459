#!/usr/bin/env python
"""Train Divide & Conquer on the generated shapes data set (or any data set): see --help.

The same as `tfdnc train`; `--help` answers before TensorFlow is imported.
"""

import sys

from tfdnc.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("train", sys.argv[1:], prog="train.py"))
