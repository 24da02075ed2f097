"""Where the time of one ``robustkit harden`` goes: training, the core evaluation, the domain's own attacks.

Runs ``robustkit harden DOMAIN`` with the domain's defaults (what ``robustkit quickstart`` runs for it) and
times, in wall seconds: the domain's ``fit`` (both models), the core evaluation (``rk.evaluate``: the
preset's attacks at every budget of the curve, then the gradient-masking checks), the domain's ``assess``
(for tabular, ``worst_case``: the strongest constrained attack) and writing the examples. Prints one JSON
object; the shares are of the whole run.

    python bench/harden_phases.py tabular --out runs/phases
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from collections.abc import Callable
from typing import Any

import robustkit.pipeline as pipeline
from robustkit.cli import main as cli
from robustkit.domain import get_domain


def timed(owner: Any, name: str, label: str, spent: dict[str, float]) -> None:
    """Replace ``owner.name`` with a wrapper adding its wall time to ``spent[label]``."""
    inner: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[label] += time.perf_counter() - started

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("domain", help="a registered domain: images, tabular, text")
    parser.add_argument("--out", required=True, help="run directory (overwritten)")
    args = parser.parse_args()
    spent: dict[str, float] = collections.defaultdict(float)
    domain = type(get_domain(args.domain))
    timed(domain, "fit", "train (both models)", spent)
    timed(pipeline, "evaluate", "core evaluation (preset attacks at every budget, then the checks)", spent)
    timed(domain, "assess", "the domain's own attacks (assess)", spent)
    timed(pipeline, "_write_examples", "writing examples", spent)
    started = time.perf_counter()
    code = cli(["harden", args.domain, "--out", args.out, "--force", "--quiet"])
    total = time.perf_counter() - started
    print(json.dumps({"exit": code, "total seconds": round(total, 1),
                      **{k: {"seconds": round(v, 1), "share": round(v / total, 3)} for k, v in spent.items()}},
                     indent=1))


if __name__ == "__main__":
    main()
