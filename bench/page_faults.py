"""Page faults and time per image of the hardened small CNN's passes on the CPU, with and without
``robustkit.models.keep_heap`` (docs/benchmarks.md, performance findings, item 8).

Each setting runs in a fresh process, because glibc's thresholds keep what the process did before:

    python bench/page_faults.py              # glibc's defaults
    python bench/page_faults.py --keep-heap  # the heap kept for reuse, as attacks now do

Needs the model of ``images_robustness.py --methods pgd --minutes 20 --attacks none --tag _aa``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-heap", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).parent))
    from autoattack_side_by_side import trained_elsewhere
    from cpu_passes import passes

    from robustkit.models import channels_last_on_cpu, keep_heap

    if args.keep_heap:
        print("keep_heap applied:", keep_heap())
    model = trained_elsewhere("mnist", "_aa_pgd")
    for rows in (64, 226):
        calls = 6400 // rows
        with channels_last_on_cpu(model, torch.rand(2, 1, 28, 28)):
            for grad in (False, True):
                passes(model, rows, grad, 3 * rows)  # three warm-up passes
                faults, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
                passes(model, rows, grad, calls * rows)
                ms = (time.perf_counter() - started) / calls / rows * 1e3
                per_call = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / calls
                print(f"{rows} rows, {'forward+backward' if grad else 'forward'}: {ms:.3f} ms per image, "
                      f"{per_call:.0f} page faults per pass", flush=True)

if __name__ == "__main__":
    main()
