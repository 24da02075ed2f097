"""Square's queries with windowed passes against full passes on the hardened small CNN (docs/benchmarks.md,
performance findings, item 11).

    python bench/square_windowed.py                        # per window side: ms per image-query, both ways
    python bench/square_windowed.py --attack --n 100       # Square-5000 on test images, alternating both ways

The first mode times one query of every window side of AutoAttack's schedule (25 down to 2 pixels on 28x28
images) on ``--rows`` random images: a full forward pass in slices of 64 rows (what a query costs without the
engine) against ``WindowedForward`` recomputing the layers near each window and accepting a tenth of the
points. The second runs ``rk.Square`` (Linf 0.3, ``--queries``) on the first ``--n`` MNIST test images, with
and without the engine, alternating ``--repeats`` times, and checks that both find the same successes with the
same number of passes. Needs the model of ``images_robustness.py --methods pgd --minutes 20 --attacks none
--tag _aa``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

SIDES = (25, 18, 13, 9, 6, 4, 3, 2)


def per_side(model: torch.nn.Module, rows: int, repeats: int) -> None:
    from robustkit.attacks.windowed import WindowedForward
    from robustkit.models import channels_last_on_cpu, keep_heap

    keep_heap()
    x = torch.rand(rows, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    accept = torch.Generator().manual_seed(1)
    with channels_last_on_cpu(model, x[:2]), torch.no_grad():
        engine = WindowedForward.of(model, x)
        assert engine is not None, "the model is not a chain of layers the engine reads"
        engine.reset(x)

        def full() -> None:
            torch.cat([model(part) for part in x.split(64)])

        def windowed(side: int, corner: torch.Tensor) -> None:
            _, patches = engine(x, corner, side)
            engine.accept(patches, torch.rand(rows, generator=accept) < 0.1)

        full()
        started = time.perf_counter()
        for _ in range(repeats):
            full()
        base = (time.perf_counter() - started) / repeats / rows * 1e3
        print(f"full pass: {base:.3f} ms per image")
        for side in SIDES:
            corner = torch.randint(0, 28 - side + 1, (rows, 2), generator=torch.Generator().manual_seed(side))
            windowed(side, corner)
            started = time.perf_counter()
            for _ in range(repeats):
                windowed(side, corner)
            ms = (time.perf_counter() - started) / repeats / rows * 1e3
            print(f"side {side:2d}: windowed {ms:.3f} ms per image ({ms / base:.2f} of a full pass)", flush=True)


def attack(model: torch.nn.Module, n: int, queries: int, repeats: int) -> None:
    from attack_overhead import load_mnist

    import robustkit as rk
    import robustkit.attacks.square as square_module

    root = Path(os.environ.get("ROBUSTKIT_DATA", "/work/shared/datasets")) / "mnist"
    _, _, x_test, y_test = load_mnist(root)
    x, y = x_test[:n].contiguous(), y_test[:n]
    square = rk.Square(rk.LinfBall(eps=0.3, bounds=(0.0, 1.0)), queries=queries)
    engine_of = square_module.WindowedForward.of
    results = {}
    for _ in range(repeats):
        for way in ("windowed", "full"):
            square_module.WindowedForward.of = engine_of if way == "windowed" else (lambda model, x: None)
            started = time.perf_counter()
            result = square(model, x, y)
            seconds = time.perf_counter() - started
            results[way] = result
            print(f"{way:8s}: {seconds:6.1f} s, {int(result.success.sum())} of {n} broken, "
                  f"{result.forward_passes} forward passes", flush=True)
    square_module.WindowedForward.of = engine_of
    same = bool((results["windowed"].success == results["full"].success).all())
    print(f"same successes: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attack", action="store_true", help="run Square on test images instead of timing sides")
    parser.add_argument("--rows", type=int, default=222, help="images per query (the survivors of a shard)")
    parser.add_argument("--n", type=int, default=100, help="test images (--attack)")
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from autoattack_side_by_side import trained_elsewhere

    torch.set_num_threads(args.threads)
    model = trained_elsewhere("mnist", "_aa_pgd")
    if args.attack:
        attack(model, args.n, args.queries, args.repeats)
    else:
        per_side(model, args.rows, args.repeats)


if __name__ == "__main__":
    main()
