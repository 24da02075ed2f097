"""The tabular fraud domain: a schema threat model over raw transaction rows, fraud judged at a fixed FPR.

Data specs: ``synthetic`` (the default: :mod:`domains.tabular.synthetic`, seeded card transactions).
Only fraud rows are attacked, towards "not fraud", at the operating threshold chosen on validation
data at ``target_fpr`` (default 1%). The budget is the schema's cost budget (see
:mod:`domains.tabular.schema`); every adversarial row written passes ``schema.validate``.

Options (``options:`` in a config file): ``n_rows`` (10000), ``fraud_rate`` (0.06), ``target_fpr``
(0.01), ``hidden`` (list of layer widths, default [64, 64]).

Example:
    >>> data = TabularDomain().load_data("synthetic", seed=0, options={"n_rows": 1000})
    >>> len(data.train), len(data.val), len(data.test)
    (599, 200, 201)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn
from torch.utils.data import TensorDataset

from domains.tabular.model import SchemaEncoder, TabularMLP
from domains.tabular.schema import Column, Schema
from domains.tabular.space import SchemaSpace, decode, encode, repair
from domains.tabular.synthetic import DEFAULT_BUDGET, card_schema, generate
from robustkit import ConfigError, ContinuousSpace, DataError, DatasetInfo, Domain, DomainData
from robustkit.attacks import PGD
from robustkit.domain import Examples
from robustkit.evaluation.binary import binary_metrics, threshold_at_fpr
from robustkit.models import frozen_eval, logits_of

__all__ = ["Column", "Schema", "SchemaEncoder", "SchemaSpace", "TabularDomain", "TabularMLP", "decode", "encode",
           "repair"]

OPTIONS = ("n_rows", "fraud_rate", "target_fpr", "hidden")


def _scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with frozen_eval(model), torch.no_grad():
        return torch.softmax(logits_of(model(x)), dim=1)[:, 1].double()


def _labels(df: pd.DataFrame, target: str) -> torch.Tensor:
    y = df[target]
    if y.isna().any():
        raise DataError(f"target column {target!r} has missing values")
    values = set(pd.unique(y).tolist())
    if not values <= {0, 1} or len(values) < 2:
        raise DataError(f"target column {target!r} must be binary (0/1, both present), got values {sorted(values)[:5]}")
    return torch.tensor(y.to_numpy(dtype=np.int64))


class TabularDomain(Domain):
    """Fraud detection on raw rows under a schema's cost budget (see the module docstring)."""

    name = "tabular"
    default_data = "synthetic"
    default_budget = DEFAULT_BUDGET
    default_method = "pgd"
    default_epochs = 8
    default_batch_size = 128
    default_lr = 3e-3

    # ----------------------------------------------------------------- data
    def load_data(self, spec: str, seed: int, options: dict[str, Any]) -> DomainData:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"unknown tabular option {unknown[0]!r}: allowed options are {', '.join(OPTIONS)}")
        if spec != "synthetic":
            raise ConfigError(f"the tabular domain reads --data synthetic for now, not {spec!r}")
        n_rows = options.get("n_rows", 10000)
        if isinstance(n_rows, bool) or not isinstance(n_rows, int) or n_rows < 100:
            raise ConfigError(f"options.n_rows must be an integer >= 100, got {n_rows!r}")
        fraud_rate = float(options.get("fraud_rate", 0.06))
        target_fpr = float(options.get("target_fpr", 0.01))
        if not 0 < fraud_rate < 0.5 or not 0 < target_fpr < 0.5:
            raise ConfigError("options.fraud_rate and options.target_fpr must lie between 0 and 0.5")
        df = generate(n_rows, seed=seed, fraud_rate=fraud_rate)
        return self.from_frame(df, card_schema(), seed, target_fpr, name="synthetic-card-transactions")

    def from_frame(self, df: pd.DataFrame, schema: Schema, seed: int, target_fpr: float = 0.01,
                   name: str = "dataframe") -> DomainData:
        """Split ``df`` (stratified 60/20/20, seeded) and encode it under ``schema`` (checked first)."""
        if schema.target is None:
            raise ConfigError("the schema names no target column: set target: COLUMN")
        schema.check_frame(df)
        y = _labels(df, schema.target)
        rng = np.random.default_rng(seed)
        parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        for cls in (0, 1):
            idx = rng.permutation(np.flatnonzero(y.numpy() == cls))
            a, b = int(0.6 * len(idx)), int(0.8 * len(idx))
            parts["train"] += idx[:a].tolist()
            parts["val"] += idx[a:b].tolist()
            parts["test"] += idx[b:].tolist()
        frames = {k: df.iloc[sorted(v)].reset_index(drop=True) for k, v in parts.items()}
        sets = {k: TensorDataset(encode(schema, f), _labels(f, schema.target)) for k, f in frames.items()}
        numeric = [c.name for c in schema.columns if c.numeric]
        train = frames["train"]
        raw = {"schema": schema, "frames": frames, "target_fpr": target_fpr,
               "mean": [float(train[c].mean()) for c in numeric], "std": [float(train[c].std()) for c in numeric]}
        split = (f"train {len(frames['train'])} / val {len(frames['val'])} / test {len(frames['test'])}; "
                 f"stratified, seed {seed}")
        info = DatasetInfo(name, None, split, n_classes=2, class_names=["legit", "fraud"])
        return DomainData(sets["train"], sets["val"], sets["test"], info, raw)

    # ----------------------------------------------------------------- model
    def model_spec(self, data: DomainData, options: dict[str, Any]) -> dict[str, Any]:
        hidden = options.get("hidden", [64, 64])
        if not isinstance(hidden, list) or not all(isinstance(h, int) and h > 0 for h in hidden):
            raise ConfigError(f"options.hidden must be a list of positive integers, got {hidden!r}")
        return {"schema": data.raw["schema"].to_dict(), "mean": data.raw["mean"], "std": data.raw["std"],
                "hidden": hidden}

    def build_model(self, spec: dict[str, Any]) -> nn.Module:
        return TabularMLP(spec)

    # ----------------------------------------------------------------- threat model
    def space(self, budget: float, data: DomainData) -> ContinuousSpace:
        return SchemaSpace(data.raw["schema"], budget)

    def attackable(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        return y == 1

    def choose_threshold(self, model: nn.Module, data: DomainData) -> float | None:
        x, y = data.val.tensors  # type: ignore[attr-defined]
        return threshold_at_fpr(_scores(model, x)[y == 0], data.raw.get("target_fpr", 0.01))

    # ----------------------------------------------------------------- metrics and examples
    def domain_metrics(self, model: nn.Module, data: DomainData, report: Any) -> dict[str, Any]:
        x, yt = data.test.tensors  # type: ignore[attr-defined]
        scores = _scores(model, x).numpy()
        out: dict[str, Any] = {
            **binary_metrics(report.outcomes),
            "roc_auc": float(roc_auc_score(yt.numpy(), scores)),
            "average_precision": float(average_precision_score(yt.numpy(), scores)),
        }
        out.update(self._adversarial_rows(model, data, report))
        return out

    def _adversarial_rows(self, model: nn.Module, data: DomainData, report: Any) -> dict[str, Any]:
        """Attack the test fraud rows (PGD-20), repair them into rows, and check them with the schema."""
        budget = float(report.threat.get("budget", data.raw["schema"].budget))
        x, y = data.test.tensors  # type: ignore[attr-defined]
        idx = (y == 1).nonzero().squeeze(1)
        if len(idx) == 0:
            return {}
        schema: Schema = data.raw["schema"].with_budget(budget)
        space = SchemaSpace(schema)
        result = PGD(space, steps=20, seed=0)(model, x[idx], y[idx])
        original = data.raw["frames"]["test"].iloc[idx.numpy()]
        rows, info = repair(schema, result.x_adv, x[idx], original)
        x_rep = encode(schema, rows)
        fooled = _scores(model, x_rep) < 0.5  # the decided model: argmax is the threshold decision
        success = fooled & ~torch.tensor(info["repair_failed"].to_numpy())
        costs = info["cost"].to_numpy()[success.numpy()]
        return {
            "valid_adversarial_share": float(schema.validate(rows, original).mean()),
            "repair_failed_share": float(info["repair_failed"].mean()),
            "mean_cost_successful": float(costs.mean()) if len(costs) else None,
        }

    def write_examples(self, directory: Path, examples: Examples, data: DomainData) -> list[Path]:
        """``examples.csv``: adversarial rows in the user's columns, the changed cells and their cost."""
        directory.mkdir(parents=True, exist_ok=True)
        schema: Schema = data.raw["schema"]
        n = len(examples.y)
        original = data.raw["frames"]["test"].iloc[:n]
        rows, info = repair(schema, examples.x_adv, examples.x, original)
        table = rows.copy()
        table.insert(0, "label", examples.y.numpy())
        table["clean_prediction"] = examples.pred_clean.numpy()
        table["adversarial_prediction"] = examples.pred_adv.numpy()
        table["fooled"] = examples.success.numpy().astype(bool) & ~info["repair_failed"].to_numpy()
        table["valid"] = schema.validate(rows, original).to_numpy()
        for k in ("cost", "changed", "repair_failed"):
            table[k] = info[k].to_numpy()
        path = directory / "examples.csv"
        table.to_csv(path, index_label="index")
        return [path]

    # ----------------------------------------------------------------- persistence
    def save_model(self, model: nn.Module, directory: Path, spec: dict[str, Any],
                   threshold: float | None = None) -> None:
        """Weights and model.json (schema, standardisation, threshold) plus a readable ``schema.yaml``."""
        super().save_model(model, directory, spec, threshold)
        Schema.from_dict(spec["schema"]).dump(directory / "schema.yaml")
