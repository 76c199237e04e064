"""``python -m seqmnist``: the same command line as ``seqmnist``."""

import sys

from .cli import main

sys.exit(main())
