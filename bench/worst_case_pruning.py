"""Time of the strongest tabular evaluation (``worst_case``) pruned against the suite before pruning.

Trains one MLP on the synthetic card data (``method``, ``epochs``), then attacks its test fraud rows with
the code before pruning (read from git at ``--before``, a commit) and with ``worst_case(prune=True)``,
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

import numpy as np
import torch

import robustkit as rk
from domains.tabular import TabularDomain
from domains.tabular.attacks import worst_case
from domains.tabular.synthetic import card_schema, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--method", default="pgd")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--before", default="f02a233", help="commit whose domains/tabular/attacks.py is the baseline")
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = subprocess.run(["git", "show", f"{args.before}:domains/tabular/attacks.py"], check=True,
                            capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "attacks_before.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("attacks_before", path)
        assert spec is not None and spec.loader is not None
        before = importlib.util.module_from_spec(spec)
        sys.modules["attacks_before"] = before
        spec.loader.exec_module(before)

    domain, schema = TabularDomain(), card_schema()
    data = domain.from_frame(generate(args.rows, seed=0, fraud_rate=0.05), schema, seed=0)
    torch.manual_seed(0)
    model = domain.build_model(domain.model_spec(data, {}))
    rk.AdversarialTrainer(model, domain.space(schema.budget, data), method=args.method, progress=False,
                          attackable=domain.attackable,
                          optimizer=torch.optim.Adam(model.parameters(), lr=3e-3)).fit(
        domain.loader(data.train, 128, shuffle=True), epochs=args.epochs)
    decided = domain.decided(model.eval(), domain.choose_threshold(model, data))
    x, y = data.test.tensors
    idx = (y == 1).nonzero().squeeze(1)
    original = data.raw["frames"]["test"].iloc[idx.numpy()]
    runs = {"before": lambda: before.worst_case(decided, schema, x[idx], original, seed=0),
            "pruned": lambda: worst_case(decided, schema, x[idx], original, seed=0)}
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
        print(json.dumps({"same_rows_evaded": bool(np.array_equal(fooled["before"], fooled["pruned"]))}), flush=True)


if __name__ == "__main__":
    main()
