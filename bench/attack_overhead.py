"""Attack overhead: wall time of robustkit PGD-k over k input-gradient passes on the same batch.

Setting (the issue's): small CNN (conv 32 3x3 -> pool -> conv 64 3x3 -> pool -> FC 128 -> 10) on MNIST,
28x28 grey inputs in [0, 1], batch = the first 256 test images, Linf eps 0.3, 2 CPU threads, best of 5.

* floor: k input-gradient passes (forward + backward to the input; eval mode, parameters'
  ``requires_grad`` False) on the clean batch, in a plain loop;
* robustkit: ``rk.PGD(space, steps=k, early_stop=...)`` on the same batch, everything included
  (input checks, random start, steps, projection, bookkeeping, the last iterate's forward, the success re-check);
* ratio = robustkit time / floor time (the issue: plain loops and torchattacks 1.00, ART 1.59; goal <= 1.02).

Two references are timed alongside, interleaved with the above: the floor taken at a random start of the ball
instead of the clean batch (a pass's cost depends on the data: see docs/benchmarks.md), and a plain PGD loop in
the torchattacks style (no success check). robustkit's own per-step cost is also measured apart from the model,
on a linear model whose passes cost almost nothing.

Models: a standard model (1 epoch, Adam 1e-3, batch 128), a hardened one (robustkit ``AdversarialTrainer``,
PGD-5 training at eps 0.3 for 2 epochs, eps warm-up over the first), and a control that is never broken (the
hardened network's logits scaled by 1e-3 plus a constant 20 on class 0, attacked with label 0), where no example
ever succeeds and early exit cannot help. Trained weights are cached in ``bench/results/`` (safetensors).

It also times ``rk.evaluate(model, (x_test[:1000], y_test[:1000]), space, attacks=[PGD-20, APGD-CE-50],
checks=False)`` on both trained models with the attacks built with ``early_stop=True`` and ``False``.

Run (from the repository root):  python bench/attack_overhead.py [--steps 10 50] [--repeats 5]
Data: $ROBUSTKIT_DATA/mnist (default /work/shared/datasets/mnist), the original gzipped IDX files.
Output: markdown tables on stdout, raw numbers in bench/results/attack_overhead.json; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import statistics
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import robustkit as rk

RESULTS = Path(__file__).resolve().parent / "results"
EPS = 0.3
BATCH = 256
#: The training recipes; a cached weight file is reused only if its recipe matches.
RECIPES: dict[str, dict[str, Any]] = {
    "standard": {"method": "standard", "epochs": 1, "lr": 1e-3, "batch": 128, "seed": 0},
    "hardened": {
        "method": "pgd", "pgd_steps": 5, "eps": EPS, "budget_warmup": 1.0, "epochs": 2, "lr": 1e-3, "batch": 128,
        "seed": 0,
    },
}


# ---------------------------------------------------------------------------- data
def read_idx(path: Path) -> torch.Tensor:
    """A gzipped IDX file (unsigned bytes) as a uint8 tensor of the shape its header gives."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    if len(data) - offset != math.prod(dims):
        raise ValueError(f"{path}: header says {dims} but holds {len(data) - offset} bytes of data")
    return torch.frombuffer(bytearray(data[offset:]), dtype=torch.uint8).reshape(dims)


def load_mnist(root: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MNIST train and test sets: images (N, 1, 28, 28) float32 in [0, 1], labels int64."""

    def images(name: str) -> torch.Tensor:
        return (read_idx(root / name).float() / 255.0).unsqueeze(1)

    def labels(name: str) -> torch.Tensor:
        return read_idx(root / name).long()

    return (
        images("train-images-idx3-ubyte.gz"),
        labels("train-labels-idx1-ubyte.gz"),
        images("t10k-images-idx3-ubyte.gz"),
        labels("t10k-labels-idx1-ubyte.gz"),
    )


# ---------------------------------------------------------------------------- models
def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )


class NeverBroken(nn.Module):
    """Control: the network's cost, logits ``1e-3 * net(x) + 20 * [class 0]``; with label 0 nothing flips.

    The offset is +20, not larger, so that the softmax tail (about e^-20) stays a normal float:
    denormals would slow the backward pass and distort the timing.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("offset", torch.tensor([20.0] + [0.0] * 9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1e-3 * self.net(x) + self.offset


def train(name: str, x: torch.Tensor, y: torch.Tensor, space: rk.LinfBall) -> tuple[nn.Module, dict[str, str]]:
    """Train (or load from the cache) the model ``name``; returns it and its metadata."""
    recipe = RECIPES[name]
    path = RESULTS / f"mnist_cnn_{name}.safetensors"
    torch.manual_seed(recipe["seed"])
    model = small_cnn()
    if path.exists():
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("recipe") == json.dumps(recipe, sort_keys=True):
            model.load_state_dict(load_file(str(path)))
            return model.eval(), meta
        print(f"[{name}] cached weights were trained with another recipe: retraining")
    print(f"[{name}] training: {recipe}", flush=True)
    loader = DataLoader(TensorDataset(x, y), batch_size=recipe["batch"], shuffle=True)
    method: Any = "standard" if recipe["method"] == "standard" else rk.methods.PGDTraining(steps=recipe["pgd_steps"])
    trainer = rk.AdversarialTrainer(
        model, space, method=method, optimizer=torch.optim.Adam(model.parameters(), lr=recipe["lr"]),
        budget_warmup=recipe.get("budget_warmup", 0.0), seed=recipe["seed"], progress=False,
    )
    start = time.perf_counter()
    trainer.fit(loader, epochs=recipe["epochs"])
    seconds = time.perf_counter() - start
    print(f"[{name}] trained in {seconds:.0f} s", flush=True)
    meta = {"recipe": json.dumps(recipe, sort_keys=True), "train_seconds": f"{seconds:.1f}", "torch": torch.__version__}
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return model.eval(), meta


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred == y).float().mean())


# ---------------------------------------------------------------------------- timing
def freeze(model: nn.Module) -> None:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def gradient_passes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int) -> None:
    """The floor: k input-gradient passes (forward + backward to the input), parameters frozen."""
    for _ in range(k):
        xr = x.detach().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xr), y, reduction="none")
        torch.autograd.grad(loss.sum(), xr)


def forward_passes(model: nn.Module, x: torch.Tensor, k: int) -> None:
    """k no-grad forward passes: what evaluating an iterate's success costs."""
    with torch.no_grad():
        for _ in range(k):
            model(x)


def random_start(x: torch.Tensor, eps: float, seed: int = 0) -> torch.Tensor:
    noise = torch.empty_like(x).uniform_(-eps, eps, generator=torch.Generator().manual_seed(seed))
    return (x + noise).clamp(0.0, 1.0)


def plain_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, k: int) -> torch.Tensor:
    """Reference: PGD-k as plain loops and torchattacks write it (random start, sign steps, no success check)."""
    alpha = 2.5 * eps / k
    x_adv = random_start(x, eps)
    for _ in range(k):
        x_adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.clamp(x + torch.clamp(x_adv - x, -eps, eps), 0.0, 1.0)
    return x_adv


def _cpu_ticks() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return values[3] + values[4], sum(values)


def steal_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from /proc/stat ((0, 0) where it does not exist): the time a
    virtual machine's hypervisor gave to others, which slows every timing and which no wait can see."""
    if not Path("/proc/stat").exists():
        return 0, 0
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (values[7] if len(values) > 7 else 0), sum(values)


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the CPUs' time stolen by the hypervisor between two :func:`steal_ticks` readings."""
    return (after[0] - before[0]) / max(after[1] - before[1], 1)


def wait_quiet(max_wait: float = 120.0, busy_limit: float = 0.1, probe: float = 0.25) -> float:
    """Wait until other processes use under ``busy_limit`` of the CPUs; returns the seconds waited.

    Called between timed runs (this process is idle then), so the busy share it sees is other work. On a
    shared machine this keeps best-of-N timings from all being taken while another job holds a core. It
    gives up after ``max_wait`` seconds, and does nothing where /proc/stat does not exist.
    """
    if not Path("/proc/stat").exists():
        return 0.0
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait:
        idle0, total0 = _cpu_ticks()
        time.sleep(probe)
        idle1, total1 = _cpu_ticks()
        if 1.0 - (idle1 - idle0) / max(total1 - total0, 1) < busy_limit:
            break
    return time.perf_counter() - start


#: seconds :func:`timed` waited for a quiet machine, one entry per timed run
WAITED: list[float] = []
#: CPU seconds of this process over wall seconds, one entry per timed run (about the threads kept busy)
CPU_SHARE: list[float] = []


def timed(fn: Callable[[], Any], quiet: bool = True) -> float:
    """Wall seconds of ``fn()``, started once the machine is quiet (see :func:`wait_quiet`)."""
    if quiet:
        WAITED.append(wait_quiet())
    cpu = time.process_time()
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    CPU_SHARE.append((time.process_time() - cpu) / wall)
    return wall


def measure_pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, space: rk.LinfBall, k: int, repeats: int
) -> dict[str, Any]:
    """The floors, k forwards, the plain loop and robustkit PGD-k (early exit on, off); interleaved, best of N."""
    attacks = {"on": rk.PGD(space, steps=k, early_stop=True), "off": rk.PGD(space, steps=k, early_stop=False)}
    freeze(model)
    x_start = random_start(x, space.budget, seed=1)
    runs: dict[str, Callable[[], Any]] = {
        "floor": lambda: gradient_passes(model, x, y, k),
        "floor_start": lambda: gradient_passes(model, x_start, y, k),
        "forward": lambda: forward_passes(model, x, k),
        "plain": lambda: plain_pgd(model, x, y, space.budget, k),
        "on": lambda: attacks["on"](model, x, y),
        "off": lambda: attacks["off"](model, x, y),
    }
    results = {early: attack(model, x, y) for early, attack in attacks.items()}  # warm-up, and the figures
    x_plain = plain_pgd(model, x, y, space.budget, k)
    with torch.no_grad():
        plain_success = float((model(x_plain).argmax(1) != y).float().mean())
    for name in ("floor", "floor_start", "forward"):
        runs[name]()
    times: dict[str, list[float]] = {name: [] for name in runs}
    first = len(CPU_SHARE)
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    cpu_share = statistics.median(CPU_SHARE[first:])
    best = {name: min(t) for name, t in times.items()}
    g, f = best["floor"] / k, best["forward"] / k

    def paired(name: str) -> float:
        return statistics.median(t / b for t, b in zip(times[name], times["floor"], strict=True))

    rows = {"plain": {
        "success_rate": plain_success, "grad_passes": float(k), "forward_only_passes": 0.0,
        "seconds": best["plain"], "ratio": best["plain"] / best["floor"], "ratio_paired_median": paired("plain"),
        "ratio_start": best["plain"] / best["floor_start"], "work_ratio": 1.0,
    }}
    for early, r in results.items():
        grad_passes = r.backward_passes / len(y)
        forward_only = (r.forward_passes - r.backward_passes) / len(y)
        rows[early] = {
            "success_rate": float(r.success.float().mean()),
            "grad_passes": grad_passes,
            "forward_only_passes": forward_only,
            "seconds": best[early],
            "ratio": best[early] / best["floor"],
            "ratio_paired_median": paired(early),
            "ratio_start": best[early] / best["floor_start"],
            # its passes at the measured per-pass costs, over the floor: the ratio with zero overhead
            "work_ratio": (grad_passes * g + forward_only * f) / best["floor"],
            "robustkit_over_plain": best[early] / best["plain"],
        }
    return {
        "k": k, "grad_pass_ms": g * 1e3, "forward_ms": f * 1e3, "floor_seconds": best["floor"],
        "floor_start_seconds": best["floor_start"], "cpu_share": cpu_share, "rows": rows, "times": times,
    }


def measure_bookkeeping(x: torch.Tensor, space: rk.LinfBall, k: int, repeats: int) -> dict[str, Any]:
    """robustkit's own cost, apart from the model: PGD-k on a linear model (784 -> 10) that is never broken.

    The model's passes cost about a hundredth of the CNN's, so what robustkit adds (input checks, random start,
    steps, projection, best-point bookkeeping, loss accumulation) is measured with little noise, as the time
    over k input-gradient passes plus the one forward of the last iterate.
    """
    torch.manual_seed(0)
    linear = NeverBroken(nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 10)))
    freeze(linear)
    y = torch.zeros(len(x), dtype=torch.long)
    attack = rk.PGD(space, steps=k, early_stop=False)

    def floor() -> None:
        gradient_passes(linear, x, y, k)
        forward_passes(linear, x, 1)

    attack(linear, x, y)
    floor()
    wait_quiet()
    floor_t, pgd_t = [], []
    for _ in range(repeats):
        floor_t.append(timed(floor, quiet=False))
        pgd_t.append(timed(lambda: attack(linear, x, y), quiet=False))
    return {"k": k, "floor_ms": min(floor_t) * 1e3, "pgd_ms": min(pgd_t) * 1e3,
            "overhead_ms": (min(pgd_t) - min(floor_t)) * 1e3}


def measure_evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, space: rk.LinfBall, repeats: int
) -> list[dict[str, Any]]:
    """``evaluate`` with PGD-20 and APGD-CE-50 built with early exit on, then off; best of ``repeats``."""
    rows = []
    for early in (True, False):
        attacks = [rk.PGD(space, steps=20, early_stop=early), rk.APGD(space, steps=50, loss="ce", early_stop=early)]
        reports: list[Any] = []
        times = [
            timed(lambda a=attacks, got=reports: got.append(rk.evaluate(model, (x, y), space, attacks=a, checks=False)))
            for _ in range(repeats)
        ]
        report = reports[-1]
        entries = report.per_budget[0]["attacks"]
        rows.append({
            "early_stop": early,
            "seconds": min(times),
            "times": times,
            "clean_accuracy": report.clean_accuracy,
            "robust_accuracy": dict(report.robust_accuracy),
            "same_every_run": all(r.robust_accuracy == report.robust_accuracy for r in reports),
            "grad_passes": entries["worst"]["backward_passes"] / len(y),
            "forward_passes": entries["worst"]["forward_passes"] / len(y),
            "attack_seconds": {label: e["seconds"] for label, e in entries.items()},
        })
    return rows


# ---------------------------------------------------------------------------- main
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


ROW_NAMES = {"plain": "plain loop (reference)", "on": "robustkit, early exit on", "off": "robustkit, early exit off"}


def print_tables(out: dict[str, Any]) -> None:
    print(f"\ntorch {out['torch']}, {out['threads']} threads ({out['cpu']}), batch {BATCH}, Linf eps {EPS}, "
          f"best of {out['repeats']}\n")
    print("| model | recipe | training s | clean accuracy, 10k test | clean accuracy, the batch |")
    print("|---|---|---|---|---|")
    for name, info in out["models"].items():
        print(f"| {name} | `{json.dumps(info['recipe'])}` | {info['train_seconds']:.0f} | "
              f"{info['clean_accuracy_test']:.4f} | {info['clean_accuracy_batch']:.4f} |")

    print("\n### PGD-k against k input-gradient passes on the same batch\n")
    print("| model | k | run | success | grad passes / k | forward-only passes | seconds | **ratio** "
          "| ratio, median of paired runs | ratio its passes cost | ratio to the floor at a random start |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, blocks in out["pgd"].items():
        for b in blocks:
            for key, r in b["rows"].items():
                print(f"| {name} | {b['k']} | {ROW_NAMES[key]} | {r['success_rate']:.3f} | "
                      f"{r['grad_passes'] / b['k']:.3f} | {r['forward_only_passes']:.2f} | {r['seconds']:.3f} | "
                      f"**{r['ratio']:.3f}** | {r['ratio_paired_median']:.3f} | {r['work_ratio']:.3f} | "
                      f"{r['ratio_start']:.3f} |")

    print("\n| model | k | floor s (clean batch) | floor s (random start) | one gradient pass ms | one forward ms "
          "| forward / gradient pass | CPU s / wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, blocks in out["pgd"].items():
        for b in blocks:
            print(f"| {name} | {b['k']} | {b['floor_seconds']:.3f} | {b['floor_start_seconds']:.3f} | "
                  f"{b['grad_pass_ms']:.1f} | {b['forward_ms']:.1f} | {b['forward_ms'] / b['grad_pass_ms']:.3f} | "
                  f"{b['cpu_share']:.2f} |")

    g_cnn = min(b["grad_pass_ms"] for blocks in out["pgd"].values() for b in blocks)
    print("\n### robustkit's own cost (PGD-k on a linear 784 -> 10 model that is never broken)\n")
    print("| k | k grad passes + 1 forward ms | robustkit PGD ms | overhead ms per call | overhead ms per step "
          f"| per step, share of one CNN gradient pass ({g_cnn:.1f} ms) |")
    print("|---|---|---|---|---|---|")
    for b in out["bookkeeping"]:
        per_step = b["overhead_ms"] / b["k"]
        print(f"| {b['k']} | {b['floor_ms']:.2f} | {b['pgd_ms']:.2f} | {b['overhead_ms']:.2f} | {per_step:.3f} | "
              f"{per_step / g_cnn:.2%} |")
    if len(out["bookkeeping"]) >= 2:
        lo, hi = out["bookkeeping"][0], out["bookkeeping"][-1]
        slope = (hi["overhead_ms"] - lo["overhead_ms"]) / (hi["k"] - lo["k"])
        print(f"\nFit over k: {slope:.3f} ms per step ({slope / g_cnn:.2%} of a CNN gradient pass) "
              f"+ {lo['overhead_ms'] - slope * lo['k']:.2f} ms per call.")

    if out["evaluate"]:
        print(f"\n### evaluate(): first {out['eval_n']} test images, PGD-20 + APGD-CE-50, checks=False, "
              f"best of {out['eval_repeats']}\n")
        print("| model | early exit | seconds | speed-up | clean | robust PGD-20 | robust APGD-CE-50 | robust worst "
              "| grad passes / example |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, rows in out["evaluate"].items():
            off = next(r for r in rows if not r["early_stop"])["seconds"]
            for r in rows:
                ra = r["robust_accuracy"]
                print(f"| {name} | {'on' if r['early_stop'] else 'off'} | {r['seconds']:.1f} | "
                      f"{off / r['seconds']:.2f}x | {r['clean_accuracy']:.3f} | {ra['pgd']:.3f} | "
                      f"{ra['apgd-ce']:.3f} | {ra['worst']:.3f} | {r['grad_passes']:.1f} |")
    w = out["waited"]
    print(f"\nTimed runs: {w['runs']}; {w['runs_waited']} of them waited for other jobs to leave the CPUs "
          f"({w['seconds']:.0f} s in all). 1-minute load average {out['loadavg'][0]:.2f} at the start, "
          f"{out['loadavg'][1]:.2f} at the end (this benchmark alone counts about 2).")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 50], help="PGD step counts k")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs (floor and PGD)")
    parser.add_argument("--eval-repeats", type=int, default=3, help="best of this many evaluate() runs")
    parser.add_argument("--eval-n", type=int, default=1000, help="test images for evaluate()")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--models", nargs="+", choices=["standard", "hardened", "control"],
                        default=["standard", "hardened", "control"], help="models for the PGD table")
    parser.add_argument("--skip-evaluate", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(os.environ.get("ROBUSTKIT_DATA", "/work/shared/datasets")) / "mnist"
    x_train, y_train, x_test, y_test = load_mnist(root)
    space = rk.LinfBall(eps=EPS, bounds=(0.0, 1.0))

    trained = {name: train(name, x_train, y_train, space) for name in RECIPES}
    x, y = x_test[:BATCH], y_test[:BATCH]
    models: dict[str, tuple[nn.Module, torch.Tensor]] = {
        "standard": (trained["standard"][0], y),
        "hardened": (trained["hardened"][0], y),
        "never-broken control": (NeverBroken(trained["hardened"][0]), torch.zeros_like(y)),
    }
    out: dict[str, Any] = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_name(),
        "repeats": args.repeats, "eval_repeats": args.eval_repeats, "eval_n": args.eval_n,
        "loadavg": [os.getloadavg()[0]],
        "models": {
            name: {
                "recipe": json.loads(meta["recipe"]),
                "train_seconds": float(meta.get("train_seconds", "nan")),
                "clean_accuracy_test": accuracy(model, x_test, y_test),
                "clean_accuracy_batch": accuracy(model, x, y),
            }
            for name, (model, meta) in trained.items()
        },
        "pgd": {}, "bookkeeping": [], "evaluate": {},
    }
    chosen = {"standard": "standard", "hardened": "hardened", "control": "never-broken control"}
    for name in [chosen[m] for m in args.models]:
        model, labels = models[name]
        out["pgd"][name] = [measure_pgd(model, x, labels, space, k, args.repeats) for k in args.steps]
        print(f"[{name}] PGD measured", flush=True)
    out["bookkeeping"] = [measure_bookkeeping(x, space, k, max(50, 10 * args.repeats)) for k in args.steps]
    if not args.skip_evaluate:
        xe, ye = x_test[: args.eval_n], y_test[: args.eval_n]
        for name in ("standard", "hardened"):
            out["evaluate"][name] = measure_evaluate(trained[name][0], xe, ye, space, args.eval_repeats)
            print(f"[{name}] evaluate measured", flush=True)
    out["loadavg"].append(os.getloadavg()[0])
    out["waited"] = {"runs": len(WAITED), "runs_waited": sum(w > 0.5 for w in WAITED), "seconds": sum(WAITED)}
    print_tables(out)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "attack_overhead.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
