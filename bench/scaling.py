"""Scaling benchmark: processes vs threads, streamed evaluation memory, mixed precision on a GPU.

Three measurements, each printed as a markdown table and saved to ``bench/results/scaling_<part>.json``:

``throughput``
    Samples per second of ``fast`` and ``pgd`` (PGD-10) training of the reference small CNN on MNIST,
    1 process x 2 threads against 2 processes x 1 thread (``torchrun``, gloo, DistributedDataParallel),
    same global batch and seed. Timed over ``--steps`` optimizer steps after 3 warm-up steps.
``memory``
    Peak resident memory (and peak CUDA memory on a GPU) of a PGD-10 evaluation streamed over 1x, 10x
    and 100x of a 1,000-image MNIST test set (an IterableDataset that repeats the images, each copy a
    new example with its own random start), each size in a fresh process.
``amp``
    Samples per second of ``fast`` and ``pgd`` training on one GPU, full precision vs bf16 autocast.

Run from the repository root:

    python bench/scaling.py throughput --methods fast pgd --steps 30
    python bench/scaling.py memory --sizes 1 10 100 --model mlp
    python bench/scaling.py amp --device cuda --batch 512 --steps 50

MNIST comes from ``$ROBUSTKIT_DATA/mnist`` (default ``/work/shared/datasets/mnist``) or ``--data-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import robustkit as rk
from domains.images.models import PreActResNet18, SmallCNN
from domains.images.readers import load_mnist
from robustkit import distributed

RESULTS = Path(__file__).parent / "results"
EPS = 0.3
WARMUP_STEPS = 3


def _mnist(args: argparse.Namespace, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    folder = args.data_dir or Path(os.environ.get("ROBUSTKIT_DATA", "/work/shared/datasets")) / "mnist"
    data = load_mnist(folder)
    part = data.train if split == "train" else data.test
    assert part is not None
    return part.x[:n].float().div(255.0), part.y[:n]


def _method(name: str) -> rk.training.methods.Method:
    return rk.methods.get("pgd", steps=10) if name == "pgd" else rk.methods.get(name)


# ------------------------------------------------------------------------------------------ training
def train_worker(args: argparse.Namespace) -> None:
    """One timed training run (alone, or as one process of torchrun); rank 0 prints a JSON line."""
    torch.set_num_threads(args.threads)
    device = distributed.setup(args.device)
    n = args.batch * (args.steps + WARMUP_STEPS)
    torch.manual_seed(0)
    model: torch.nn.Module
    if args.model == "resnet":  # speed only: random 32x32 colour images stand in for CIFAR-10
        x, y = torch.rand(n, 3, 32, 32), torch.randint(0, 10, (n,))
        model = PreActResNet18(channels=3, classes=10).to(device)
    else:
        x, y = _mnist(args, "train", n)
        model = SmallCNN(channels=1, size=28, classes=10).to(device)
    space = rk.LinfBall(eps=EPS if args.model != "resnet" else 8 / 255, bounds=(0.0, 1.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def fit(lo: int, hi: int) -> float:
        trainer = rk.AdversarialTrainer(model, space, _method(args.method), optimizer, seed=0, device=device,
                                        amp=args.amp, progress=False)
        data = distributed.loader(TensorDataset(x[lo:hi], y[lo:hi]), batch_size=args.batch, shuffle=False)
        distributed.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.fit(data, epochs=1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        distributed.barrier()
        return time.perf_counter() - start

    fit(0, args.batch * WARMUP_STEPS)
    seconds = fit(args.batch * WARMUP_STEPS, n)
    if distributed.is_main():
        print(json.dumps({"method": args.method, "model": args.model, "processes": distributed.world_size(),
                          "threads": args.threads, "amp": args.amp, "batch": args.batch, "steps": args.steps,
                          "seconds": seconds,
                          "samples_per_s": args.batch * args.steps / seconds}))
    distributed.teardown()


def _launch_train(args: argparse.Namespace, method: str, processes: int, threads: int, amp: str) -> dict[str, Any]:
    worker = [str(Path(__file__).resolve()), "train-worker", "--method", method, "--threads", str(threads),
              "--batch", str(args.batch), "--steps", str(args.steps), "--device", args.device, "--amp", amp,
              "--model", args.model]
    if args.data_dir:
        worker += ["--data-dir", str(args.data_dir)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), *worker]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for method in args.methods:
        for processes, threads in ((1, 2), (2, 1)):
            rows.append(_launch_train(args, method, processes, threads, "none"))
            print(rows[-1], flush=True)
    print("\n| method | processes x threads | samples/s | seconds |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['method']} | {r['processes']} x {r['threads']} | {r['samples_per_s']:.1f} | {r['seconds']:.1f} |")
    return rows


def amp(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for method in args.methods:
        for precision in ("none", "bf16"):
            rows.append(_launch_train(args, method, 1, args.threads, precision))
            print(rows[-1], flush=True)
    print("\n| model | method | precision | samples/s | seconds |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['method']} | {r['amp']} | {r['samples_per_s']:.1f} | {r['seconds']:.2f} |")
    return rows


# ------------------------------------------------------------------------------------------ memory
class _Repeated(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """``copies`` passes over (x, y) in batches: the data never exists in memory as a whole."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, copies: int, batch: int) -> None:
        self.x, self.y, self.copies, self.batch = x, y, copies, batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.copies):
            for i in range(0, len(self.y), self.batch):
                yield self.x[i : i + self.batch].clone(), self.y[i : i + self.batch].clone()


def memory_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x, y = _mnist(args, "test", 1000)
    torch.manual_seed(0)
    model: torch.nn.Module
    if args.model == "cnn":
        model = SmallCNN(channels=1, size=28, classes=10)
    else:
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 256), torch.nn.ReLU(),
                                    torch.nn.Linear(256, 10))
    model = model.to(device)
    space = rk.LinfBall(eps=EPS, bounds=(0.0, 1.0))
    # a standard model trained for one epoch on 10,000 images, so that most test images are attacked
    xt, yt = _mnist(args, "train", 10_000)
    rk.AdversarialTrainer(model, space, "standard", torch.optim.Adam(model.parameters(), lr=1e-3), device=device,
                          progress=False).fit(DataLoader(TensorDataset(xt, yt), batch_size=128, shuffle=True), epochs=1)
    model.eval()
    stream = DataLoader(_Repeated(x, y, args.size, 250), batch_size=None)
    start = time.perf_counter()
    report = rk.evaluate(model, stream, space, attacks=[rk.PGD(space, steps=10, early_stop=False)], checks=False)
    seconds = time.perf_counter() - start
    peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    print(json.dumps({"copies": args.size, "examples": report.n_examples, "model": args.model, "device": args.device,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "peak_cuda_mib": peak_cuda, "seconds": seconds,
                      "examples_per_s": report.n_examples / seconds,
                      "robust_accuracy": report.robust_accuracy["worst"]}))


def memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for size in args.sizes:
        command = [sys.executable, str(Path(__file__).resolve()), "memory-worker", "--size", str(size),
                   "--model", args.model, "--device", args.device, "--threads", str(args.threads)]
        if args.data_dir:
            command += ["--data-dir", str(args.data_dir)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    print("\n| images | peak RSS (MiB) | peak CUDA (MiB) | seconds | images/s |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        cuda = f"{r['peak_cuda_mib']:.0f}" if r["peak_cuda_mib"] is not None else "-"
        print(f"| {r['examples']:,} | {r['peak_rss_mib']:.0f} | {cuda} | {r['seconds']:.1f} "
              f"| {r['examples_per_s']:.0f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["throughput", "memory", "amp", "train-worker", "memory-worker"])
    parser.add_argument("--methods", nargs="+", default=["fast", "pgd"])
    parser.add_argument("--method", default="fast")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    parser.add_argument("--batch", type=int, default=128, help="global batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1, 10, 100])
    parser.add_argument("--size", type=int, default=1)
    parser.add_argument("--model", choices=["cnn", "mlp", "resnet"], default="cnn",
                        help="memory: cnn or mlp; throughput/amp: cnn (MNIST) or resnet (PreAct ResNet-18, random "
                        "32x32 images: speed only)")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--tag", default="", help="suffix of the results file")
    args = parser.parse_args()
    if args.part in ("train-worker", "memory-worker"):
        if args.part == "train-worker":
            args.amp = None if args.amp == "none" else args.amp
            train_worker(args)
        else:
            memory_worker(args)
        return
    rows = {"throughput": throughput, "memory": memory, "amp": amp}[args.part](args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() else None
    record = {"part": args.part, "argv": sys.argv[1:], "torch": torch.__version__, "python": platform.python_version(),
              "cpus": os.cpu_count(), "gpu": gpu, "rows": rows}
    path = RESULTS / f"scaling_{args.part}{args.tag}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
