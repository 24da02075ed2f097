"""PGD side by side: robustkit, torchattacks and ART on the same model, images, steps and step size.

The models are the small MNIST CNNs of ``attack_overhead.py`` (standard and PGD-trained, cached in
``bench/results/``). On the first ``--n`` MNIST test images, each library runs Linf PGD with eps 0.3,
``--steps`` steps of size ``--alpha`` (default 2.5 eps / steps) from a uniform random start, batch 250, in one process,
interleaved, best of ``--repeats`` wall times (each started once the CPUs are quiet). Repeat ``r`` draws every
library's random start from seed ``r``, so the adversarial counts are reported per seed and as a mean: a
single random start decides borderline images. Every library's output is checked the same way: inside the
ball and the pixel range (to 1e-6), and counted as an adversarial example only if a fresh forward pass
misclassifies it. ``--device cuda`` runs all three on the GPU (timings synchronised).

Peers install with torch pinned: ``pip install -c constraints.txt --no-deps torchattacks`` and
``pip install -c constraints.txt adversarial-robustness-toolbox packaging``.

    python bench/pgd_side_by_side.py    # = --n 1000 --steps 10 50 --repeats 3 --threads 2 --device cpu
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import robustkit as rk

sys.path.insert(0, str(Path(__file__).parent))
from attack_overhead import RESULTS, load_mnist, timed, train

EPS = 0.3
BATCH = 250


def run_robustkit(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, alpha: float, seed: int
) -> torch.Tensor:
    attack = rk.PGD(rk.LinfBall(eps=EPS, bounds=(0.0, 1.0)), steps=steps, step_size=alpha, seed=seed)
    return torch.cat([attack(model, x[i:i + BATCH], y[i:i + BATCH]).x_adv for i in range(0, len(x), BATCH)])


def run_torchattacks(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, alpha: float, seed: int
) -> torch.Tensor:
    import torchattacks

    torch.manual_seed(seed)
    attack = torchattacks.PGD(model, eps=EPS, alpha=alpha, steps=steps, random_start=True)
    return torch.cat([attack(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)])


def run_art(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, alpha: float, seed: int
) -> torch.Tensor:
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    np.random.seed(seed)
    torch.manual_seed(seed)
    classifier = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                                   clip_values=(0.0, 1.0), device_type="gpu" if x.is_cuda else "cpu")
    attack = ProjectedGradientDescentPyTorch(classifier, norm=np.inf, eps=EPS, eps_step=alpha, max_iter=steps,
                                             num_random_init=1, batch_size=BATCH, verbose=False)
    return torch.as_tensor(attack.generate(x=x.cpu().numpy(), y=y.cpu().numpy()), device=x.device)


RUNNERS = {"robustkit": run_robustkit, "torchattacks": run_torchattacks, "ART": run_art}


def _collect(out: list[torch.Tensor], runner: Any, *args: Any) -> None:
    out.append(runner(*args))
    if out[-1].is_cuda:
        torch.cuda.synchronize()


def check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> dict[str, Any]:
    inside = ((x_adv - x).abs().flatten(1).amax(1) <= EPS + 1e-6) & (x_adv >= -1e-6).flatten(1).all(1)
    inside &= (x_adv <= 1 + 1e-6).flatten(1).all(1)
    with torch.no_grad():
        wrong = torch.cat([model(x_adv[i:i + BATCH]).argmax(1) for i in range(0, len(x), BATCH)]) != y
    return {"inside": int(inside.sum()), "adversarial": int((wrong & inside).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--alpha", type=float, default=None, help="step size (default 2.5 eps / steps)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-wait", action="store_true", help="do not wait for quiet CPUs (smoke runs)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(os.environ.get("ROBUSTKIT_DATA", "/work/shared/datasets")) / "mnist"
    x_train, y_train, x_test, y_test = load_mnist(root)
    space = rk.LinfBall(eps=EPS, bounds=(0.0, 1.0))
    x, y = x_test[: args.n].to(args.device), y_test[: args.n].to(args.device)
    rows = []
    for name in ("standard", "hardened"):
        model, _ = train(name, x_train, y_train, space)
        model.to(args.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for steps in args.steps:
            alpha = args.alpha if args.alpha is not None else 2.5 * EPS / steps
            times: dict[str, list[float]] = {k: [] for k in RUNNERS}
            found: dict[str, list[dict[str, int]]] = {k: [] for k in RUNNERS}
            for seed in range(args.repeats):
                for lib, runner in RUNNERS.items():
                    out: list[torch.Tensor] = []
                    call = functools.partial(_collect, out, runner, model, x, y, steps, alpha, seed)
                    times[lib].append(timed(call, quiet=not args.no_wait and args.device == "cpu"))
                    found[lib].append(check(model, x, y, out[0]))
            for lib in RUNNERS:
                counts = [f["adversarial"] for f in found[lib]]
                rows.append({"model": name, "steps": steps, "alpha": alpha, "library": lib,
                             "best_seconds": min(times[lib]), "seconds": times[lib],
                             "adversarial_per_seed": counts, "adversarial": float(np.mean(counts)),
                             "inside": min(f["inside"] for f in found[lib])})
                print(f"{name:8s} PGD-{steps:<3d} {lib:12s} {min(times[lib]):7.3f} s  "
                      f"adversarial {np.mean(counts):6.1f}/{args.n} {counts}  inside {rows[-1]['inside']}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    (RESULTS / f"pgd_side_by_side{suffix}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print("\n| model | steps | library | best wall s | adversarial found (mean) | per seed | inside the ball |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['steps']} | {r['library']} | {r['best_seconds']:.3f} | {r['adversarial']:.1f} | "
              f"{r['adversarial_per_seed']} | {r['inside']} |")


if __name__ == "__main__":
    main()
