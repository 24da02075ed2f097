"""The ``robustkit`` command.

``robustkit quickstart --out DIR`` hardens a model on the built-in robust/non-robust problem and
writes a report; errors print one line and exit with status 2 (a traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustkit.errors import ConfigError, RobustkitError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robustkit", description="Harden models against adversarial inputs.")
    sub = parser.add_subparsers(dest="command", required=True)
    quick = sub.add_parser(
        "quickstart",
        help="harden a model on built-in data and compare it with a standard one",
        description="Train a standard and an adversarially trained (PGD) model on the built-in robust/non-robust "
        "problem, evaluate both with the 'standard' attack preset and the gradient-masking checks, print the "
        "comparison and write report.html and metrics.json to --out.",
    )
    quick.add_argument("--out", default="runs/quickstart", help="output folder (default: runs/quickstart)")
    for p in (quick,):
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
        p.add_argument("--force", action="store_true", help="overwrite a complete output folder")
        p.add_argument("--quiet", action="store_true", help="print only the result table")
        p.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _prepare_out(out: Path, force: bool) -> None:
    if (out / "metrics.json").exists() and not force:
        raise ConfigError(f"{out} already holds a complete run: pass --force to overwrite it or choose another --out")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")


def _publish(tmp: Path, out: Path) -> None:
    """Move a finished temporary run folder into place (replacing an old one only now)."""
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)


def _quickstart(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import robustkit as rk
    from robustkit.datasets import TOY_BOUNDS, TOY_EPS, robust_nonrobust
    from robustkit.evaluation import evaluate
    from robustkit.training.checkpoint import atomic_write_text

    out = Path(args.out)
    _prepare_out(out, args.force)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    say = (lambda *_: None) if args.quiet else print
    x, y = robust_nonrobust(3000, seed=args.seed)
    xv, yv = robust_nonrobust(500, seed=args.seed + 1)
    xt, yt = robust_nonrobust(1000, seed=args.seed + 2)
    space = rk.LinfBall(eps=TOY_EPS, bounds=TOY_BOUNDS)
    budgets = [round(TOY_EPS * f, 4) for f in (0.2, 0.4, 0.6, 0.8, 1.0)]
    reports: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for name, method in (("standard", "standard"), ("hardened", "pgd")):
        torch.manual_seed(args.seed)
        model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        say(f"training the {name} model ({method})...")
        start = time.perf_counter()
        rk.AdversarialTrainer(model, space, method=method, optimizer=opt, seed=args.seed, progress=False).fit(
            DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True), epochs=10,
            val_loader=DataLoader(TensorDataset(xv, yv), batch_size=500),
        )
        seconds[name] = time.perf_counter() - start
        say(f"evaluating the {name} model...")
        reports[name] = evaluate(model, (xt, yt), space, eps=budgets, attacks="standard", seed=args.seed)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        import json

        import torch as _torch

        from robustkit import __version__

        hardened = reports["hardened"]
        metrics = {
            "schema_version": 1,
            "domain": "toy",
            "dataset": {"name": "robust_nonrobust", "sha256": None, "split": "3000/500/1000 generated"},
            "seed": args.seed,
            "threat": {"space": space.name, "budget": space.budget, "eps": space.budget},
            "attacks": hardened.attacks,
            "models": {
                name: {
                    "clean_accuracy": rep.clean_accuracy,
                    "robust_accuracy": rep.robust_accuracy,
                    "domain_metrics": {},
                    "train_seconds": seconds[name],
                    "verdict": rep.verdict,
                }
                for name, rep in reports.items()
            },
            "checks": [c.to_dict() for c in hardened.checks],
            "verdict": hardened.verdict,
            "versions": {"robustkit": __version__, "torch": _torch.__version__},
        }
        sections = "".join(
            f"<h2>{name} model</h2>{rep._repr_html_()}" for name, rep in reports.items()
        )
        html = (
            "<!doctype html><html><head><meta charset='utf-8'><title>robustkit quickstart</title></head><body>"
            f"<h1>robustkit quickstart</h1><p>Command: <code>robustkit quickstart --out {out} --seed {args.seed}"
            f"</code>; robustkit {__version__}, torch {_torch.__version__}.</p>{sections}</body></html>"
        )
        (tmp / "report.html").write_text(html, encoding="utf-8")
        atomic_write_text(tmp / "metrics.json", json.dumps(metrics, indent=2, default=float))
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    print(f"{'model':10s} {'clean':>7s} {'robust':>7s}  verdict (Linf eps={space.budget:g}, worst of "
          f"{', '.join(a for a in hardened.attack_names if a != 'worst')})")
    for name, rep in reports.items():
        print(f"{name:10s} {rep.clean_accuracy:7.1%} {rep.robust_accuracy['worst']:7.1%}  {rep.verdict}")
    print(f"report: {out / 'report.html'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``robustkit`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        if args.command == "quickstart":
            return _quickstart(args)
        parser.error(f"unknown command {args.command}")
    except RobustkitError as exc:
        if args.debug:
            raise
        print(f"robustkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustkit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
