"""Images benchmark: adversarial training methods on MNIST / Fashion-MNIST under a training-time budget.

For each method the script trains the reference small CNN (``domains.images.SmallCNN``) with robustkit's
``AdversarialTrainer`` for as many epochs as fit in ``--minutes`` (calibrated on 20 timed steps), with
Adam and a one-cycle schedule and the budget ramped up over the first epochs, then evaluates it with
``rk.evaluate(..., attacks="thorough")`` (PGD-50 x 5 restarts, APGD-CE-100, APGD-DLR-100, the
gradient-free random search with 1000 queries, plus the gradient-masking checks; ``--attacks`` names
another preset, or ``none`` to skip) on the first ``--n-eval`` test images. The trained model is saved
as ``bench/results/images_<data><tag>_<method>.safetensors`` (``autoattack_side_by_side.py`` reads it).
Per epoch it records the training minutes so far and robust accuracy under PGD-10 on 1000 held-out
training images (the trainer's validation, also used to keep the best epoch): the minutes-vs-robustness
curve.

Run from the repository root (prints a markdown table, writes ``bench/results/images_<data>.json``):

    python bench/images_robustness.py --data mnist --eps 0.3 --methods pgd fast trades free --minutes 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

import robustkit as rk
from domains.images.models import SmallCNN
from domains.images.readers import load_mnist

RESULTS = Path(__file__).parent / "results"
VAL = 1000


def method_for(name: str, steps: int) -> rk.training.methods.Method:
    """The named method; ``steps`` sets the inner PGD steps of ``pgd`` and ``trades``."""
    if name in ("pgd", "trades"):
        return rk.methods.get(name, steps=steps)
    return rk.methods.get(name)


def make_trainer(model: torch.nn.Module, space: rk.LinfBall, args: argparse.Namespace, method: str,
                 steps_total: int, warmup: float) -> rk.AdversarialTrainer:
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=max(steps_total, 2))
    return rk.AdversarialTrainer(
        model, space, method_for(method, args.inner_steps), optimizer, scheduler=scheduler,
        scheduler_interval="step", budget_warmup=warmup, seed=args.seed, progress=False,
    )


def seconds_per_step(method: str, space: rk.LinfBall, loader: DataLoader[Any], args: argparse.Namespace) -> float:
    """Wall time of one optimizer step of ``method`` (the mean of 20 after 3 warm-up steps)."""
    batches = [b for _, b in zip(range(23), loader, strict=False)]
    model = SmallCNN(channels=1, size=28, classes=10)
    trainer = make_trainer(model, space, args, method, steps_total=1000, warmup=0.0)
    trainer.fit(batches[:3], epochs=1)
    start = time.perf_counter()
    trainer = make_trainer(model, space, args, method, steps_total=1000, warmup=0.0)
    trainer.fit(batches[3:], epochs=trainer.method.replays)
    return (time.perf_counter() - start) / (20 * trainer.method.replays)


def run_method(method: str, data: dict[str, torch.Tensor], space: rk.LinfBall,
               args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    train = TensorDataset(data["x_train"], data["y_train"])
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    per_step = seconds_per_step(method, space, loader, args)
    replays = rk.methods.get(method).replays
    epoch_seconds = per_step * len(loader) * replays
    epochs = max(1, int(args.minutes * 60 // epoch_seconds)) if args.epochs is None else args.epochs
    epochs_arg = epochs * replays  # the trainer divides by the replays
    warmup = min(args.warmup, epochs / 3)
    print(f"[{method}] {per_step * 1000:.0f} ms/step -> {epochs} epochs of {epoch_seconds:.0f} s", flush=True)

    model = SmallCNN(channels=1, size=28, classes=10)
    trainer = make_trainer(model, space, args, method, steps_total=epochs * replays * len(loader), warmup=warmup)
    val = DataLoader(TensorDataset(data["x_val"], data["y_val"]), batch_size=250)
    history = trainer.fit(loader, epochs=epochs_arg, val_loader=val)
    train_minutes = float(history["train_seconds"].sum()) / 60
    curve = [
        {"epoch": int(r.epoch), "train_minutes": float(history["train_seconds"][: i + 1].sum() / 60),
         "budget": float(r.budget), "val_clean": float(r.val_clean_accuracy), "val_pgd10": float(r.val_robust_accuracy)}
        for i, r in enumerate(history.itertuples())
    ]
    for point in curve:
        print(f"  epoch {point['epoch']:>2} {point['train_minutes']:5.1f} min  budget {point['budget']:.3f}  "
              f"val clean {point['val_clean']:.3f}  val PGD-10 {point['val_pgd10']:.3f}", flush=True)

    RESULTS.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(RESULTS / f"images_{args.data}{args.tag}_{method}.safetensors"))
    model.eval()
    with torch.no_grad():
        full_clean = float(torch.cat([model(x).argmax(1) for x in data["x_all_test"].split(1000)])
                           .eq(data["y_all_test"]).float().mean())
    row: dict[str, Any] = {"method": method, "epochs": epochs, "train_minutes": train_minutes,
                           "ms_per_step": per_step * 1000, "clean_10k": full_clean, "curve": curve}
    if args.attacks == "none":
        print(f"[{method}] {train_minutes:.1f} min: clean {full_clean:.4f} (10k), not evaluated", flush=True)
        return row
    started = time.perf_counter()
    report = rk.evaluate(model, (data["x_test"], data["y_test"]), space, attacks=args.attacks, seed=args.seed)
    row.update({
        "clean": report.clean_accuracy, "robust": {k: float(v) for k, v in report.robust_accuracy.items()},
        "verdict": report.verdict, "failed_checks": [c.name for c in report.failed_checks],
        "eval_minutes": (time.perf_counter() - started) / 60,
    })
    print(f"[{method}] {train_minutes:.1f} min: clean {full_clean:.4f} (10k), worst {row['robust']['worst']:.3f} "
          f"{row['robust']}  verdict: {report.verdict}  eval {row['eval_minutes']:.1f} min", flush=True)
    return row


def load(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    root = Path(os.environ.get("ROBUSTKIT_DATA", "/work/shared/datasets"))
    folder = {"mnist": "mnist", "fashion-mnist": "fashion_mnist"}[args.data]
    data = load_mnist(root / folder, name=args.data)
    assert data.test is not None
    x = data.train.x.float().div(255.0)
    y = data.train.y
    xt, yt = data.test.x.float().div(255.0), data.test.y
    return {"x_train": x[:-VAL], "y_train": y[:-VAL], "x_val": x[-VAL:], "y_val": y[-VAL:],
            "x_test": xt[: args.n_eval], "y_test": yt[: args.n_eval], "x_all_test": xt, "y_all_test": yt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["mnist", "fashion-mnist"], default="mnist")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--methods", nargs="+", default=["pgd", "fast", "trades", "free"])
    parser.add_argument("--minutes", type=float, default=20.0, help="training-time budget per method")
    parser.add_argument("--epochs", type=int, default=None, help="fixed epochs instead of --minutes")
    parser.add_argument("--inner-steps", type=int, default=5, help="inner PGD steps of pgd and trades")
    parser.add_argument("--warmup", type=float, default=2.0, help="epochs of eps ramp-up (at most a third)")
    parser.add_argument("--lr", type=float, default=5e-3, help="max learning rate of the one-cycle schedule")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--attacks", default="thorough", help="evaluation preset, or none")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="", help="suffix of the results file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load(args)
    space = rk.LinfBall(eps=args.eps, bounds=(0.0, 1.0))
    rows = [run_method(m, data, space, args) for m in args.methods]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = {"args": vars(args), "commit": commit, "torch": torch.__version__, "python": platform.python_version(),
           "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"images_{args.data}{args.tag}.json"
    path.write_text(json.dumps(out, indent=1))
    print("\n| method | epochs | training min | clean (10k) | clean | PGD-50x5 | APGD-CE | APGD-DLR | search | worst "
          "| verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in (r for r in rows if "robust" in r):
        rb = r["robust"]
        print(f"| {r['method']} | {r['epochs']} | {r['train_minutes']:.1f} | {r['clean_10k']:.4f} | {r['clean']:.3f} | "
              f"{rb.get('pgd', float('nan')):.3f} | {rb.get('apgd-ce', float('nan')):.3f} | "
              f"{rb.get('apgd-dlr', float('nan')):.3f} | {rb.get('random-search', float('nan')):.3f} | "
              f"{rb['worst']:.3f} | "
              f"{r['verdict']} |")
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
