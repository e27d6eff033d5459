#!/usr/bin/env python
"""Train Divide & Conquer on the generated shapes data set (or any data set): see --help."""

import sys

from tfdnc.train import main

if __name__ == "__main__":
    sys.exit(main())
