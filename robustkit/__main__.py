"""``python -m robustkit``: the command line, also as ``torchrun --nproc_per_node=N -m robustkit harden ...``."""

import sys

from robustkit.cli import main

sys.exit(main())
