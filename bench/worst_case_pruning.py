"""Time of the strongest tabular evaluation (``worst_case``) now against the suite before pruning.

Trains one MLP on the synthetic card data (``method``, ``epochs``), then attacks its test fraud rows with
the code before (``worst_case`` and PGD read from git at ``--before``, a commit) and as it is now (pruned,
PGD's later restarts batched),
alternately ``--repeats`` times, and checks both evade the same rows. Prints one JSON line per run.

    python bench/worst_case_pruning.py --rows 20000 --method pgd --epochs 3 --repeats 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

import robustkit as rk
from domains.tabular import TabularDomain, TabularOptions
from domains.tabular.attacks import worst_case
from domains.tabular.synthetic import card_schema, generate


def _module_at(commit: str, path: str, name: str) -> ModuleType:
    """The module at ``path`` as it was at ``commit``, imported as ``name``."""
    source = subprocess.run(["git", "show", f"{commit}:{path}"], check=True, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as d:
        file = Path(d) / f"{name}.py"
        file.write_text(source)
        spec = importlib.util.spec_from_file_location(name, file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--method", default="pgd")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--before", default="f02a233", help="commit whose worst_case and PGD are the baseline")
    args = parser.parse_args()
    torch.set_num_threads(1)
    before = {name: _module_at(args.before, path, name) for name, path in
              (("pgd_before", "robustkit/attacks/pgd.py"), ("attacks_before", "domains/tabular/attacks.py"))}
    suite_before = before["attacks_before"]
    suite_before.PGD = before["pgd_before"].PGD  # the suite before with PGD's restarts one by one

    domain, schema = TabularDomain(), card_schema()
    data = domain.from_frame(generate(args.rows, seed=0, fraud_rate=0.05), schema, seed=0)
    torch.manual_seed(0)
    model = domain.build_model(domain.model_spec(data, TabularOptions()))
    rk.AdversarialTrainer(model, domain.space(schema.budget, data), method=args.method, progress=False,
                          attackable=domain.attackable,
                          optimizer=torch.optim.Adam(model.parameters(), lr=3e-3)).fit(
        domain.loader(data.train, 128, shuffle=True), epochs=args.epochs)
    decided = domain.decided(model.eval(), domain.choose_threshold(model, data))
    x, y = data.test.tensors
    idx = (y == 1).nonzero().squeeze(1)
    original = data.raw["frames"]["test"].iloc[idx.numpy()]
    runs = {"before": lambda: suite_before.worst_case(decided, schema, x[idx], original, seed=0),
            "now": lambda: worst_case(decided, schema, x[idx], original, seed=0)}
    fooled = {}
    for repeat in range(args.repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            found = run()
            seconds = time.perf_counter() - started
            fooled[name] = found.table["fooled"].to_numpy()
            summary = found.summary()
            print(json.dumps({"run": name, "repeat": repeat, "seconds": round(seconds, 1), "fraud_rows": len(idx),
                              "recall_clean": summary["recall_clean"],
                              "recall_attacked": summary["recall_attacked_strongest"],
                              "rows_attacked_by_attack": summary.get("rows_attacked_by_attack")}), flush=True)
        print(json.dumps({"same_rows_evaded": bool(np.array_equal(fooled["before"], fooled["now"]))}), flush=True)


if __name__ == "__main__":
    main()
