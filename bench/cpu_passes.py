"""How fast can the hardened small CNN's attack passes go on this CPU? Ways to run them, each in a fresh process
(docs/benchmarks.md, performance findings, item 10).

    python bench/cpu_passes.py                 # every setting, one fresh process each
    python bench/cpu_passes.py --rows 128      # another batch size
    python bench/cpu_passes.py --data fashion-mnist --rows 70 --settings eager balanced own-layout

Settings: ``eager`` (what attacks run: channels-last weights, ``keep_heap``, the batch in slices of 64 rows),
``balanced`` (the same in slices of equal size), ``own-layout`` (the model's layout, one batch: what the reference
AutoAttack runs), ``compile`` (``torch.compile``),
``frozen`` (``torch.compile`` with inductor's freezing: weights folded in as constants, forward passes only),
``frozen-dynamic`` (the same with a dynamic batch size, what a shrinking active set would need) and
``two-lanes`` (two Python threads of one torch thread each, half the images each). Also prints the model's
floating-point work per image (``torch.utils.flop_counter``) and this CPU's rate on a large matrix product, to
say how far from the hardware's limit the eager passes are.

Needs the model of ``images_robustness.py --methods pgd --minutes 20 --attacks none --tag _aa`` (with ``--data
fashion-mnist --eps 0.1`` for ``--data fashion-mnist``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

SETTINGS = ("eager", "balanced", "own-layout", "compile", "frozen", "frozen-dynamic", "two-lanes")
SLICE = 64
IMAGES = 25600


def passes(model: Any, rows: int, grad: bool, images: int, slices: str = "none") -> None:
    x = torch.rand(rows, 1, 28, 28).requires_grad_(grad)
    parts = {"none": (x,), "fixed": x.split(SLICE), "balanced": x.tensor_split(-(-rows // SLICE))}[slices]
    for _ in range(images // rows):
        with torch.set_grad_enabled(grad):
            out = torch.cat([model(part) for part in parts])
        if grad:
            torch.autograd.grad(out.sum(), x)


def measure(setting: str, rows: int, threads: int, data: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from autoattack_side_by_side import trained_elsewhere

    from robustkit.models import channels_last_on_cpu, keep_heap

    keep_heap()
    torch.set_num_threads(threads)
    model = trained_elsewhere(data, "_aa_pgd").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    probe = torch.rand(2, 1, 28, 28)
    slices = {"eager": "fixed", "balanced": "balanced"}.get(setting, "none")
    with channels_last_on_cpu(model, probe if setting != "own-layout" else None):
        run: Any = model
        if setting == "compile":
            run = torch.compile(model)
        elif setting.startswith("frozen"):
            import torch._inductor.config as inductor  # a fresh process per setting: the global is safe to set

            inductor.freezing = True
            run = torch.compile(model, dynamic=setting == "frozen-dynamic")
        for grad in (False, True):
            if setting.startswith("frozen") and grad:
                continue  # frozen weights serve inference only
            started = time.perf_counter()
            passes(run, rows, grad, 3 * rows, slices)
            warm = time.perf_counter() - started
            started = time.perf_counter()
            if setting == "two-lanes":
                torch.set_num_threads(1)
                lanes = [threading.Thread(target=passes, args=(run, rows, grad, IMAGES // 2)) for _ in range(2)]
                for lane in lanes:
                    lane.start()
                for lane in lanes:
                    lane.join()
                torch.set_num_threads(threads)
            else:
                passes(run, rows, grad, IMAGES, slices)
            ms = (time.perf_counter() - started) / IMAGES * 1e3
            print(f"{setting:15s} {rows} rows, {'forward+backward' if grad else 'forward'}: {ms:.3f} ms per image "
                  f"(warm-up {warm:.1f} s)", flush=True)
        check = torch.rand(rows, 1, 28, 28)  # the shape compiled for: another one would compile again
        with torch.no_grad():
            print(f"{setting:15s} logits within {float((run(check) - model(check)).abs().max()):.1e} of eager's",
                  flush=True)


def hardware(threads: int, data: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from autoattack_side_by_side import trained_elsewhere
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(threads)
    model = trained_elsewhere(data, "_aa_pgd").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, 1, 28, 28))
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    started, calls = time.perf_counter(), 20
    for _ in range(calls):
        a @ b
    rate = 2 * 2048**3 * calls / (time.perf_counter() - started) / 1e9
    print(f"model: {counter.get_total_flops() / 1e6:.1f} MFLOP per image forward; this CPU: {rate:.0f} GFLOP/s on "
          f"a 2048x2048 float32 matrix product, {threads} threads", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64, help="images per batch (attacks pass 64 at a time on the CPU)")
    parser.add_argument("--data", choices=["mnist", "fashion-mnist"], default="mnist", help="whose hardened CNN")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--one", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        measure(args.one, args.rows, args.threads, args.data)
        return
    hardware(args.threads, args.data)
    for setting in args.settings:  # each in a fresh process: glibc's thresholds remember what ran before
        subprocess.run([sys.executable, __file__, "--one", setting, "--rows", str(args.rows),
                        "--threads", str(args.threads), "--data", args.data], check=True)


if __name__ == "__main__":
    main()
