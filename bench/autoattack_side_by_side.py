"""AutoAttack side by side: robustkit's ``autoattack`` preset against the reference ``pyautoattack``.

Same model, same test images (the first ``--n`` of MNIST, or of Fashion-MNIST with ``--data fashion-mnist``),
standard version, Linf eps 0.3 (``--eps``; ``--norm L2`` for the L2 versions of every attack). The models are
trained by the quick recipes below at Linf ``--train-eps`` (default 0.3 on MNIST, 0.1 on Fashion-MNIST;
cached in ``bench/results/``), or, for ``cnn-hardened``, the hardened small CNN of the MNIST benchmark, which
``images_robustness.py`` trains beforehand. ``--skip-reference`` runs robustkit's side alone.
robustkit runs ``rk.evaluate(..., attacks="autoattack", checks=False)`` in this process; the reference runs
in a separate process of its own virtual environment (``--reference-python``; it needs torch, numpy and
pyautoattack, which declares neither: ``pip install -c constraints.txt torch numpy pyautoattack``), on the model
and images this script saves for it. Both get ``--threads`` CPU threads, one after the other. Reported per
library: robust accuracy, the robust accuracy after each attack and the examples each attack newly broke
(parsed from the reference's log), wall time, the share of the CPU the hypervisor stole meanwhile (a
virtual machine's steal slows every timing), and the images on which the two disagree. Every adversarial
example the reference returns is checked for the budget and the pixel range.

    python bench/autoattack_side_by_side.py --n 200 --reference-python /path/to/venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

EPS = 0.3
ORDER = ("apgd-ce", "apgd-t", "fab-t", "square")
#: Quick recipes for a contended machine, on the first 20,000 training images: the small CNN of
#: ``attack_overhead.py`` or a 784-256-256-10 MLP, one epoch of standard training, or PGD training
#: (budget ramped over the first half) for the hardened ones.
RECIPES: dict[str, dict[str, Any]] = {
    "cnn-standard": {"arch": "cnn", "method": "standard", "epochs": 1},
    "mlp-standard": {"arch": "mlp", "method": "standard", "epochs": 1},
    "mlp-hardened": {"arch": "mlp", "method": "pgd", "pgd_steps": 3, "epochs": 1},
    # The hardened small CNN of the MNIST benchmark, trained beforehand by
    # ``images_robustness.py --methods pgd --minutes 20 --attacks none --tag _aa`` (saved in bench/results/): the
    # 20-minute recipe itself.
    "cnn-hardened": {"arch": "smallcnn", "method": "images_robustness", "tag": "_aa_pgd"},
}
TRAIN_IMAGES = 20000


def build(arch: str) -> torch.nn.Module:
    from attack_overhead import small_cnn

    if arch == "cnn":
        return small_cnn()
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))


def trained_elsewhere(data: str, tag: str) -> torch.nn.Module:
    """The ``SmallCNN`` that ``images_robustness.py`` trained and saved, as a plain ``nn.Sequential`` (the
    reference's process unpickles it without robustkit)."""
    from attack_overhead import RESULTS
    from safetensors.torch import load_file

    from domains.images.models import SmallCNN

    path = RESULTS / f"images_{data}{tag}.safetensors"
    if not path.exists():
        raise SystemExit(f"{path} is missing: train it first with python bench/images_robustness.py --data {data} "
                         "--methods pgd --minutes 20 --attacks none --tag _aa")
    net = SmallCNN(channels=1, size=28, classes=10)
    net.load_state_dict(load_file(str(path)))
    return torch.nn.Sequential(*net.features, *net.head).eval()


def train(name: str, x: torch.Tensor, y: torch.Tensor, data: str = "mnist", eps: float = EPS) -> torch.nn.Module:
    """The model of recipe ``name`` on ``data`` (hardened at Linf ``eps``), trained (Adam, lr 1e-3, batch 128,
    seed 0) or loaded from the cache."""
    from attack_overhead import RESULTS
    from safetensors.torch import load_file, save_file
    from torch.utils.data import DataLoader, TensorDataset

    import robustkit as rk

    recipe = RECIPES[name]
    if recipe["method"] == "images_robustness":
        return trained_elsewhere(data, recipe["tag"])
    torch.manual_seed(0)
    model = build(recipe["arch"])
    tag = "" if (data, eps) == ("mnist", EPS) else f"{data}_{eps:g}_"
    path = RESULTS / f"aa_{tag}{name}.safetensors"
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    space = rk.LinfBall(eps=eps, bounds=(0.0, 1.0))
    method: Any = "standard" if recipe["method"] == "standard" else rk.methods.PGDTraining(steps=recipe["pgd_steps"])
    trainer = rk.AdversarialTrainer(model, space, method=method, optimizer=torch.optim.Adam(model.parameters(), 1e-3),
                                    budget_warmup=recipe["epochs"] / 2, seed=0, progress=False)
    loader = DataLoader(TensorDataset(x[:TRAIN_IMAGES], y[:TRAIN_IMAGES]), batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    trainer.fit(loader, epochs=recipe["epochs"])
    print(f"[{name}] trained in {time.perf_counter() - started:.0f} s", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.eval()


def reference_worker(folder: Path, threads: int, batch: int, eps: float, norm: str) -> None:
    """Run the reference AutoAttack on the saved model and images; write ``reference.json``."""
    from pyautoattack import AutoAttack

    torch.set_num_threads(threads)
    model = torch.load(folder / "model.pt", weights_only=False).eval()
    data = torch.load(folder / "data.pt")
    x, y = data["x"], data["y"]
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    log = logging.getLogger("auto-attack")
    log.setLevel(logging.DEBUG)
    log.addHandler(Keep())
    started = time.perf_counter()
    x_adv, _ = AutoAttack(model, norm=norm, eps=eps, version="standard", seed=0).run_standard_evaluation(
        x, y, batch_size=batch)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        robust = model(x_adv).argmax(1) == y
    after = {m.group(1).lower(): float(m.group(2)) / 100
             for m in (re.search(r"robust accuracy after (\S+): ([\d.]+)%", line) for line in lines) if m}
    clean = next(float(m.group(1)) / 100 for m in (re.search(r"initial accuracy: ([\d.]+)%", line) for line in lines)
                 if m)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "Linf" else delta.norm(dim=1)
    valid = bool((size <= eps + 1e-5).all() & (x_adv.min() >= 0) & (x_adv.max() <= 1))
    out = {"seconds": seconds, "clean": clean, "after": after, "robust": robust.tolist(), "valid": valid,
           "log": lines}
    (folder / "reference.json").write_text(json.dumps(out))


def run_robustkit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, eps: float,
                  norm: str) -> dict[str, Any]:
    import robustkit as rk

    ball = rk.LinfBall if norm == "Linf" else rk.L2Ball
    started = time.perf_counter()
    report = rk.evaluate(model, (x, y), ball(eps=eps, bounds=(0.0, 1.0)), attacks="autoattack",
                         checks=False, batch_size=batch)
    seconds = time.perf_counter() - started
    rows = report.per_budget[0]["attacks"]
    return {"seconds": seconds, "clean": report.clean_accuracy,
            "after": {k: rows[k]["robust_accuracy"] for k in ORDER if k in rows},
            "attack_seconds": {k: rows[k].get("seconds") for k in ORDER if k in rows},
            "robust": report.outcomes["robust"].tolist()}


def curve_against_apgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict[str, Any]:
    """Robust accuracy at several budgets from one FMN run, beside APGD-CE + APGD-DLR run at each budget."""
    import robustkit as rk
    from robustkit.evaluation import robustness_curve

    budgets = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    space = rk.LinfBall(eps=EPS, bounds=(0.0, 1.0))
    started = time.perf_counter()
    curve = robustness_curve(model, x, y, space, budgets, steps=steps)
    fmn_seconds = time.perf_counter() - started
    started = time.perf_counter()
    report = rk.evaluate(model, (x, y), space, budgets=budgets, attacks=["apgd-ce", "apgd-dlr"], checks=False)
    apgd_seconds = time.perf_counter() - started
    apgd = [p["attacks"]["worst"]["robust_accuracy"] for p in report.per_budget]
    return {"budgets": budgets, "fmn": curve.robust_accuracy, "apgd": apgd, "median_norm": curve.median_norm,
            "fmn_steps": steps, "fmn_seconds": fmn_seconds, "apgd_seconds": apgd_seconds}


def newly_broken(clean: float, after: dict[str, float], n: int) -> dict[str, int]:
    """Examples each attack broke that the ones before it did not (from robust accuracies after each)."""
    out, before = {}, clean
    for name in ORDER:
        now = after.get(name, before)
        out[name] = round((before - now) * n)
        before = now
    return out


def merge(paths: list[Path]) -> dict[str, Any]:
    """One result from shards run with ``--first``: per model and side (robustkit, reference), the shards must
    cover images ``0..N-1`` once each; where several files hold the same side of the same shard, the later one
    on the command line counts (a side re-run alone with ``--skip-reference``). Seconds add up; accuracies are
    recomputed from the per-image outcomes and the shards' ``after`` rows weighted by their size."""
    shards = [json.loads(p.read_text()) for p in paths]
    head = {k: shards[0][k] for k in ("data", "norm", "eps", "train_eps", "threads", "torch")}
    if any({k: s[k] for k in head} != head for s in shards):
        raise SystemExit("the shards differ in data, norm, eps, train_eps, threads or torch: merge like with like")
    models = [k for k in shards[0] if isinstance(shards[0][k], dict) and "robustkit" in shards[0][k]]
    out: dict[str, Any] = {**head, "shards": [str(p) for p in paths]}
    for name in models:
        row: dict[str, Any] = {}
        for side in ("robustkit", "reference"):
            parts = {s.get("first", 0): (s["n"], s[name][side]) for s in shards if side in s.get(name, {})}
            starts = sorted(parts)
            n = sum(parts[f][0] for f in starts)
            if starts != [sum(parts[g][0] for g in starts[:i]) for i in range(len(starts))]:
                raise SystemExit(f"{name}/{side}: shards starting at {starts} do not tile the images from 0")
            runs = [parts[f][1] for f in starts]
            merged: dict[str, Any] = {
                "n": n, "seconds": sum(r["seconds"] for r in runs),
                "clean": sum(parts[f][0] * parts[f][1]["clean"] for f in starts) / n,
                "after": {a: sum(parts[f][0] * parts[f][1]["after"][a] for f in starts) / n
                          for a in ORDER if all(a in r["after"] for r in runs)},
                "robust": [v for r in runs for v in r["robust"]],
                "newly_broken": {a: sum(r["newly_broken"][a] for r in runs) for a in ORDER},
                "steal": max(r["steal"] for r in runs)}
            if side == "robustkit":
                merged["attack_seconds"] = {a: sum(r["attack_seconds"][a] for r in runs) for a in ORDER}
            else:
                merged["valid"] = all(r["valid"] for r in runs)
            row[side] = merged
        if row["robustkit"]["n"] != row["reference"]["n"]:
            raise SystemExit(f"{name}: robustkit covers {row['robustkit']['n']} images, the reference "
                             f"{row['reference']['n']}")
        row["disagree"] = sum(a != b for a, b in zip(row["robustkit"]["robust"], row["reference"]["robust"],
                                                     strict=True))
        row["time_ratio"] = row["robustkit"]["seconds"] / row["reference"]["seconds"]
        out[name] = row
        ours, ref = row["robustkit"], row["reference"]
        print(f"[{name}] {ours['n']} images | robust: robustkit {sum(ours['robust']) / ours['n']:.4f} "
              f"({ours['seconds']:.0f} s), reference {sum(ref['robust']) / ref['n']:.4f} ({ref['seconds']:.0f} s), "
              f"ratio {row['time_ratio']:.3f} | newly broken robustkit {ours['newly_broken']} reference "
              f"{ref['newly_broken']} | {row['disagree']} images differ")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="N test images (from --first on)")
    parser.add_argument("--first", type=int, default=0, help="index of the first test image (to run in shards)")
    parser.add_argument("--models", nargs="+", default=["mlp-standard", "mlp-hardened"], choices=list(RECIPES))
    parser.add_argument("--data", choices=["mnist", "fashion-mnist"], default="mnist")
    parser.add_argument("--norm", choices=["Linf", "L2"], default="Linf", help="the threat model compared")
    parser.add_argument("--eps", type=float, default=EPS, help="budget of the comparison, in --norm")
    parser.add_argument("--train-eps", type=float, help="Linf budget of the hardened recipes (default: 0.3 on "
                                                         "MNIST, 0.1 on Fashion-MNIST)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--reference-python", default=sys.executable,
                        help="python of the environment with pyautoattack")
    parser.add_argument("--curve-steps", type=int, default=0,
                        help="also compare one FMN run of this many steps with per-budget APGD (0: skip)")
    parser.add_argument("--skip-reference", action="store_true", help="run robustkit's preset alone")
    parser.add_argument("--curve-only", action="store_true", help="only the curve (with --curve-steps)")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/autoattack_side_by_side.json)")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="combine the results of shards (--first) into --out, running nothing")
    parser.add_argument("--reference-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.merge:
        if args.out is None:
            raise SystemExit("--merge needs --out")
        merged = merge(args.merge)
        args.out.write_text(json.dumps(merged, indent=1))
        print(f"written {args.out}")
        return
    if args.reference_worker is not None:
        reference_worker(args.reference_worker, args.threads, args.batch, args.eps, args.norm)
        return

    sys.path.insert(0, str(Path(__file__).parent))
    from attack_overhead import RESULTS, load_mnist, steal_share, steal_ticks

    torch.set_num_threads(args.threads)
    folder_name = {"mnist": "mnist", "fashion-mnist": "fashion_mnist"}[args.data]
    root = Path(os.environ.get("ROBUSTKIT_DATA", "/work/shared/datasets")) / folder_name
    train_eps = args.train_eps if args.train_eps is not None else (EPS if args.data == "mnist" else 0.1)
    x_train, y_train, x_test, y_test = load_mnist(root)
    x, y = (t[args.first: args.first + args.n].contiguous() for t in (x_test, y_test))
    results: dict[str, Any] = {"n": len(x), "first": args.first, "data": args.data, "norm": args.norm, "eps": args.eps,
                               "train_eps": train_eps, "threads": args.threads, "torch": torch.__version__,
                               "load_before": os.getloadavg()}
    for name in args.models:
        model = train(name, x_train, y_train, args.data, train_eps)
        with torch.no_grad():
            clean_10k = float((torch.cat([model(b).argmax(1) for b in x_test.split(1000)]) == y_test).float().mean())
        if args.curve_steps:
            curve = curve_against_apgd(model, x, y, args.curve_steps)
            results.setdefault("curves", {})[name] = curve
            print(f"[{name}] FMN-{args.curve_steps} curve {curve}", flush=True)
        if args.curve_only:
            continue
        if args.skip_reference:
            stolen = steal_ticks()
            ours = run_robustkit(model, x, y, args.batch, args.eps, args.norm)
            ours["steal"] = steal_share(stolen, steal_ticks())
            ours["newly_broken"] = newly_broken(ours["clean"], ours["after"], len(x))
            results[name] = {"clean_10k": clean_10k, "robustkit": ours}
            print(f"[{name}] clean {ours['clean']:.3f} | robust: robustkit {ours['after']['square']:.3f} "
                  f"({ours['seconds']:.0f} s, {ours['steal']:.1%} stolen) | newly broken {ours['newly_broken']} | "
                  f"seconds per attack {ours['attack_seconds']}", flush=True)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            torch.save(model, folder / "model.pt")
            torch.save({"x": x, "y": y}, folder / "data.pt")
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            stolen = steal_ticks()  # system-wide: the reference's process is timed from here
            subprocess.run([args.reference_python, __file__, "--reference-worker", str(folder), "--threads",
                            str(args.threads), "--batch", str(args.batch), "--eps", str(args.eps), "--norm", args.norm],
                           check=True, env=env)
            ref = json.loads((folder / "reference.json").read_text())
            ref["steal"] = steal_share(stolen, steal_ticks())
        stolen = steal_ticks()
        ours = run_robustkit(model, x, y, args.batch, args.eps, args.norm)
        ours["steal"] = steal_share(stolen, steal_ticks())
        row = {"clean_10k": clean_10k, "robustkit": ours, "reference": {k: v for k, v in ref.items() if k != "log"},
               "reference_log": ref["log"], "load_after": os.getloadavg()}
        for side in ("robustkit", "reference"):
            row[side]["newly_broken"] = newly_broken(row[side]["clean"], row[side]["after"], len(x))
        row["disagree"] = sum(a != b for a, b in zip(ours["robust"], ref["robust"], strict=True))
        results[name] = row
        ra, rr = ours["after"]["square"], ref["after"].get("square", min(ref["after"].values()))
        print(f"[{name}] clean {ours['clean']:.3f} | robust: robustkit {ra:.3f} ({ours['seconds']:.0f} s), "
              f"reference {rr:.3f} ({ref['seconds']:.0f} s) | newly broken robustkit "
              f"{row['robustkit']['newly_broken']} reference {row['reference']['newly_broken']} | "
              f"{row['disagree']} images differ; reference's points valid: {ref['valid']} | CPU stolen by the "
              f"hypervisor: robustkit {ours['steal']:.1%}, reference {ref['steal']:.1%}", flush=True)
    path = args.out or RESULTS / "autoattack_side_by_side.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
