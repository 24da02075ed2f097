"""``python -m robustkit``: the command line, also as ``torchrun --nproc_per_node=N -m robustkit harden ...``."""

import os
import sys

from robustkit import distributed
from robustkit.cli import main

status = main()
if distributed.launched():  # gloo's threads can abort a normal exit: leave once the output is flushed
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
sys.exit(status)
