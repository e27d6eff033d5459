import sys

from tfdnc.pretrain.cli import main

sys.exit(main())
