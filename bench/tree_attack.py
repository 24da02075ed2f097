"""Gradient-boosted trees under the schema: the tree attack against transfer and random search, and hardening.

For each seed: the synthetic card transactions (10,000 rows) or the vehicle insurance claims (``--data
vehicle``, loaded as ``bench/tabular_robustness.py`` does), split 60/20/20 stratified; a scikit-learn
``HistGradientBoostingClassifier`` (200 iterations, native categorical columns) fitted on the training
split, decided at the threshold giving ``--fpr`` false positives on validation rows, and judged on every
test fraud row by :func:`domains.tabular.blackbox.evaluate_blackbox` (the tree attack, transfer from a
distilled surrogate, random search; every row passes ``schema.validate``).
With ``--harden ROUNDS`` the same model hardened by :func:`domains.tabular.trees.harden_trees` is judged too.
With ``--model robust`` the trees are :class:`domains.tabular.robust_trees.RobustBoostedTrees` (robust splitting
with the schema's budget), judged beside the same learner with no band (budget 0), the control; ``--bands``
draws the bands with other budgets (the attack keeps the schema's).

Run from the repository root (one JSON line per run; writes ``bench/results/tree_attack_DATA_MODEL.json``):

    python bench/tree_attack.py --seeds 0 1 2 --fpr 0.01 0.05 --harden 1
    python bench/tree_attack.py --seeds 0 --model xgboost --harden 1     # needs the trees extra
    python bench/tree_attack.py --seeds 0 1 2 --fpr 0.01 0.05 --model robust
    python bench/tree_attack.py --seeds 0 --model robust --bands 1 10 100    # bands drawn with other budgets
    python bench/tree_attack.py --seeds 0 1 2 --model robust --band-side attacker --bands 3 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from tabular_robustness import load  # the same data and splits (this folder is on the path of a script)

from domains.tabular.blackbox import SklearnModel, evaluate_blackbox
from domains.tabular.robust_trees import RobustBoostedTrees
from domains.tabular.trees import fraud_scores, harden_trees, typed_frame
from robustkit.evaluation.binary import threshold_at_fpr

RESULTS = Path(__file__).parent / "results"


class Typed:
    """The fitted trees reading rows with the schema's categories as pandas categoricals."""

    def __init__(self, model: Any, schema: Any) -> None:
        self.model, self.schema = model, schema
        self.estimator_ = model  # split_thresholds reads the trees through this

    def predict_proba(self, rows: Any) -> Any:
        return self.model.predict_proba(typed_frame(self.schema, rows))


def make(kind: str, seed: int, schema: Any) -> Any:
    """An unfitted tree ensemble of the kind asked for (XGBoost and LightGBM imported only then)."""
    if kind == "robust":
        return RobustBoostedTrees(schema)
    if kind == "xgboost":
        import xgboost

        return xgboost.XGBClassifier(n_estimators=200, enable_categorical=True, tree_method="hist", random_state=seed)
    if kind == "lightgbm":
        import lightgbm

        return lightgbm.LGBMClassifier(n_estimators=200, random_state=seed, verbose=-1)
    return HistGradientBoostingClassifier(max_iter=200, random_state=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--fpr", nargs="+", type=float, default=[0.01, 0.05])
    parser.add_argument("--harden", type=int, default=0, help="rounds of harden_trees (0: standard only)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--data", choices=["synthetic", "vehicle"], default="synthetic",
                        help="synthetic card transactions or vehicle insurance claims (as tabular_robustness.py)")
    parser.add_argument("--model", choices=["hgb", "xgboost", "lightgbm", "robust"], default="hgb",
                        help="the trees: scikit-learn's HistGradientBoosting (200 iterations), XGBoost or LightGBM "
                             "(200 trees, their defaults otherwise; the trees extra), or robustkit's "
                             "RobustBoostedTrees (200 trees of depth 4) with and without its band")
    parser.add_argument("--bands", nargs="+", type=float, default=None,
                        help="--model robust: the budgets its bands are drawn with (default: the schema's and 0)")
    parser.add_argument("--band-side", choices=["worst-gain", "attacker"], default="worst-gain",
                        help="--model robust: where a split's score puts the band (RobustBoostedTrees.band_side)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = []
    for seed in args.seeds:
        data = load(args.data, seed)
        schema = data.raw["schema"]
        frames = data.raw["frames"]
        train, val, test = frames["train"], frames["val"], frames["test"]
        estimator = make(args.model, seed, schema)
        name = {"hgb": "HGB", "xgboost": "XGBoost", "lightgbm": "LightGBM", "robust": "robust trees"}[args.model]
        kinds = {f"standard {name}": (estimator, 0)}
        if args.model == "robust":  # each band budget asked for (default: the schema's, and 0: the control)
            bands = [schema.budget, 0.0] if args.bands is None else args.bands
            kinds = {f"robust trees ({args.band_side}, band budget {b:g})":
                     (clone(estimator).set_params(budget=b, band_side=args.band_side), 0) for b in bands}
        if args.harden:
            kinds[f"hardened {name} ({args.harden} rounds)"] = (estimator, args.harden)
        for kind, (prototype, rounds) in kinds.items():
            started = time.perf_counter()
            model, _ = harden_trees(prototype, schema, train, train[schema.target], target_fpr=min(args.fpr),
                                    rounds=rounds, seed=seed)
            fit_seconds = time.perf_counter() - started
            p_test = fraud_scores(model, schema, test)
            for fpr in args.fpr:
                legit = fraud_scores(model, schema, val[val[schema.target] == 0])
                threshold = threshold_at_fpr(torch.as_tensor(legit), fpr)
                out = evaluate_blackbox(SklearnModel(Typed(model, schema), schema), train, test, schema,
                                        threshold=threshold, queries=args.queries, seed=seed)
                evaded = out["table"]["fooled"]
                run = {"data": args.data, "seed": seed, "model": kind, "fpr": fpr,
                       "roc_auc": roc_auc_score(test[schema.target], p_test), "fit_seconds": fit_seconds,
                       "recall": out["recall"], "seconds": out["seconds"],
                       "n_fraud": out["n_fraud"], "evaded_by": out["table"]["attack"][evaded].value_counts().to_dict()}
                runs.append(run)
                print(json.dumps(run), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"tree_attack_{args.data}_{args.model}.json").write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
