"""The tabular fraud domain: a schema threat model over raw transaction rows, fraud judged at a fixed FPR.

Data specs: ``synthetic`` (the default: :mod:`domains.tabular.synthetic`, seeded card transactions),
``csv:PATH`` and ``parquet:PATH`` (a file of raw rows, read under a schema file; see
:mod:`domains.tabular.data`), e.g. ``robustkit harden tabular --data csv:claims.csv.gz --schema
schema.yaml --target FraudFound_P``. Only fraud rows are attacked, towards "not fraud", at the
operating threshold chosen on validation data at ``target_fpr`` (default 1%). The budget is the
schema's cost budget (see :mod:`domains.tabular.schema`); every adversarial row written passes
``schema.validate``.

Options (``options:`` in a config file): ``schema`` (schema YAML file, also ``--schema``; required
for files), ``target`` (label column; also ``--target``; default: the schema's ``target``),
``positive_label`` (the target's fraud label, also ``--positive-label``; default 1, True or "fraud": any
other pair of labels is refused with both named), ``split`` (``stratified``, the default, or ``time``),
``time_columns`` (a column or list such as
``[Year, Month]``, for ``split: time``), ``target_fpr`` (0.01), ``hidden`` (list of layer widths,
default [64, 64]), ``segment`` (a categorical column whose values split the fraud recall figures and
the report's bars; default: the schema's first categorical column), ``model_type`` (``mlp``, the
default, or gradient-boosted trees: ``hgb``, ``xgboost``, ``lightgbm``; also ``--model-type``), ``rounds``
(augmentation rounds of hardened trees, default 2; also ``--rounds``), ``queries`` (the random search's on
trees, 300); for ``synthetic`` data only: ``n_rows`` (10000), ``fraud_rate`` (0.06).

With a tree ``model_type`` the models are :class:`~domains.tabular.blackbox.TreeModel` s trained by
:func:`~domains.tabular.trees.harden_trees` (:meth:`TabularDomain.fit`), attacked by the tree attack at
every budget and by transfer and a random search at the main one, and saved in their library's own
format (see ``docs/guides/tabular.md``).

Example:
    >>> data = TabularDomain().load_data("synthetic", seed=0, options=TabularOptions(n_rows=1000))
    >>> len(data.train), len(data.val), len(data.test)
    (599, 200, 201)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import clone
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from domains.tabular import data as tabular_data
from domains.tabular.attacks import (
    CategoricalSpace,
    SearchTraining,
    SparseSchemaSpace,
    WorstCase,
    changes,
    worst_case,
)
from domains.tabular.blackbox import SklearnModel, TreeAttack, TreeModel, distill_surrogate, evaluate_blackbox
from domains.tabular.estimator import RobustTabularClassifier
from domains.tabular.model import SchemaEncoder, TabularMLP
from domains.tabular.persistence import estimator_writer, read_estimator
from domains.tabular.schema import Column, Relation, Schema
from domains.tabular.sklearn_bridge import ColumnTransformerModule, bridge
from domains.tabular.space import SchemaSpace, decode, encode, layout, repair
from domains.tabular.synthetic import DEFAULT_BUDGET, card_schema, generate
from domains.tabular.trees import (
    TREE_TYPES,
    harden_trees,
    make_estimator,
    require_library,
    split_thresholds,
    tree_attack,
    typed_frame,
)
from robustkit import ConfigError, ContinuousSpace, Domain, DomainData, RobustkitError, ThresholdModel
from robustkit.attacks.base import Attack
from robustkit.domain import Assessment, Examples, model_folder, read_model_json
from robustkit.evaluation.binary import threshold_at_fpr
from robustkit.models import frozen_eval, logits_of, model_device
from robustkit.options import DomainOptions, option
from robustkit.rendering import render
from robustkit.spaces import PerturbationSpace
from robustkit.training.fit import Fitted, TrainSettings
from robustkit.training.methods import Method

__all__ = ["CategoricalSpace", "Column", "ColumnTransformerModule", "Relation", "RobustTabularClassifier", "Schema",
           "SchemaEncoder", "SchemaSpace", "SearchTraining", "SklearnModel", "SparseSchemaSpace", "TabularDomain",
           "TabularMLP", "TabularOptions", "TreeAttack", "TreeModel", "bridge", "decode", "distill_surrogate", "encode",
           "evaluate_blackbox", "harden_trees", "repair", "split_thresholds", "tree_attack", "typed_frame",
           "worst_case"]


#: options that only synthetic data takes, and those that only files take
SYNTHETIC_OPTIONS, FILE_OPTIONS = ("n_rows", "fraud_rate"), ("schema", "target", "positive_label")


@dataclass(frozen=True)
class TabularOptions(DomainOptions):
    """The tabular domain's options (see the module docstring)."""

    schema: str | None = option(None, "schema file of csv:PATH or parquet:PATH data", flag="--schema")
    target: str | None = option(None, "label column (default: the schema's target)", flag="--target")
    positive_label: str | int | bool | None = option(
        None, "label of the attacked (fraud) class; default 1, True or fraud: other labels are refused until you "
        "name it", flag="--positive-label")
    split: str = option("stratified", "stratified, or time (needs time_columns)", flag="--split",
                        choices=tabular_data.SPLITS)
    time_columns: str | list[str] | None = option(None, "the column(s) that order rows in time, for split: time")
    target_fpr: float = option(0.01, "false-positive rate the operating threshold is chosen at, on validation data",
                               flag="--target-fpr", check=lambda v: 0 < v < 0.5, must="a number between 0 and 0.5")
    hidden: list[int] = option([64, 64], "layer widths of the reference MLP", check=lambda v: all(h > 0 for h in v),
                               must="a list of positive integers")
    model_type: str = option("mlp", "model harden trains: mlp (the neural network, trained by gradients), or a tree "
                             "ensemble hardened by adversarial data augmentation: hgb (scikit-learn's "
                             "HistGradientBoosting; saved with skops: pip install -e \".[skops]\"), xgboost or "
                             "lightgbm (pip install -e \".[trees]\")",
                             flag="--model-type", choices=("mlp", *TREE_TYPES))
    rounds: int = option(2, "tree models: attack-and-refit rounds of the hardened model (the standard one: none)",
                         flag="--rounds", check=lambda v: v >= 0, must="an integer >= 0")
    queries: int = option(300, "tree models: queries of the random search that joins the tree attack and transfer",
                          check=lambda v: v >= 1, must="an integer >= 1")
    segment: str | None = option(None, "categorical column that splits the fraud recall figures (default: the "
                                 "schema's first categorical column)")
    n_rows: int = option(10000, "synthetic data: rows generated", check=lambda v: v >= 100,
                         must="an integer >= 100")
    fraud_rate: float = option(0.06, "synthetic data: share of fraud rows", check=lambda v: 0 < v < 0.5,
                               must="a number between 0 and 0.5")


def _scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """P(fraud) of each row, on the CPU, whatever device the model is on."""
    with frozen_eval(model), torch.no_grad():
        return torch.softmax(logits_of(model(x.to(model_device(model)))), dim=1)[:, 1].double().cpu()


class TabularDomain(Domain[TabularOptions]):
    """Fraud detection on raw rows under a schema's cost budget (see the module docstring)."""

    name = "tabular"
    default_data = "synthetic"
    default_budget = DEFAULT_BUDGET
    default_method = "pgd"
    default_epochs = 8
    default_batch_size = 128
    default_lr = 3e-3
    #: the domain's own training method (``--method pgd+search``): see :meth:`training_method`
    methods = ("pgd+search",)
    Options = TabularOptions

    # ----------------------------------------------------------------- data
    def load_data(self, spec: str, seed: int, options: TabularOptions) -> DomainData:
        if options.model_type in TREE_TYPES:  # an optional library missing stops the run before any work
            require_library(options.model_type)
        data = self._load_data(spec, seed, options)
        data.raw["segment"] = _segment_column(data.raw["schema"], options.segment)
        data.raw["queries"], data.raw["model_type"] = options.queries, options.model_type
        return data

    def _load_data(self, spec: str, seed: int, options: TabularOptions) -> DomainData:
        split: dict[str, Any] = {"split": options.split, "time_columns": options.time_columns,
                                 "target_fpr": options.target_fpr}
        if spec != "synthetic":
            wrong = [k for k in SYNTHETIC_OPTIONS if k in options.given]
            if wrong:
                raise ConfigError(f"options.{wrong[0]} applies to --data synthetic only, not {spec!r}")
            return tabular_data.load(spec, seed, schema=options.schema, target=options.target,
                                     positive_label=options.positive_label, **split)
        wrong = [k for k in FILE_OPTIONS if k in options.given]
        if wrong:
            raise ConfigError(f"options.{wrong[0]} applies to csv:PATH and parquet:PATH data, not synthetic")
        df = generate(options.n_rows, seed=seed, fraud_rate=options.fraud_rate)
        return tabular_data.frame_data(df, card_schema(), seed, name="synthetic-card-transactions", **split)

    def from_frame(self, df: pd.DataFrame, schema: Schema, seed: int, target_fpr: float = 0.01,
                   name: str = "dataframe") -> DomainData:
        """Split ``df`` (stratified 60/20/20, seeded) and encode it under ``schema`` (checked first)."""
        return tabular_data.frame_data(df, schema, seed, drop=schema.drop, target_fpr=target_fpr, name=name)

    def default_budget_for(self, spec: str, options: TabularOptions | None = None) -> float:
        """The schema file's own budget when ``options`` name one, else the synthetic data's."""
        schema = options.schema if options is not None else None
        if spec != "synthetic" and schema is not None and Path(schema).is_file():
            return tabular_data.read_schema(Path(schema))[0].budget
        return self.default_budget

    # ----------------------------------------------------------------- model
    def model_spec(self, data: DomainData, options: TabularOptions) -> dict[str, Any]:
        if options.model_type in TREE_TYPES:
            return {"schema": data.raw["schema"].to_dict(), "model_type": options.model_type,
                    "rounds": options.rounds}
        return {"schema": data.raw["schema"].to_dict(), "mean": data.raw["mean"], "std": data.raw["std"],
                "hidden": list(options.hidden)}

    def build_model(self, spec: dict[str, Any]) -> nn.Module:
        """The MLP, or with ``model_type`` an unfitted :class:`~domains.tabular.blackbox.TreeModel`."""
        kind = spec.get("model_type", "mlp")
        if kind == "mlp":
            return TabularMLP(spec)
        if kind not in TREE_TYPES:
            raise ConfigError(f"unknown model_type {kind!r}: choose mlp or one of {', '.join(TREE_TYPES)}")
        return TreeModel(make_estimator(kind, seed=0), Schema.from_dict(spec["schema"]), kind, int(spec["rounds"]))

    def fit(self, model: nn.Module, data: DomainData, settings: TrainSettings,
            resume: str | Path | None = None) -> Fitted:
        """The MLP through the one trainer loop; a tree model by :func:`~domains.tabular.trees.harden_trees`, the
        augmentation rounds :class:`RobustTabularClassifier` runs too (``method: standard``: no rounds; any
        other method: ``rounds`` of them), at the run's budget and seed, decided at ``target_fpr`` on
        validation rows. Tree training keeps no checkpoint: a stopped run trains it again."""
        if not isinstance(model, TreeModel):
            return super().fit(model, data, settings, resume)
        started = time.perf_counter()
        schema: Schema = data.raw["schema"]
        rounds = self.training_plan(model, settings)["rounds"]
        estimator = clone(model.prototype).set_params(random_state=settings.seed)
        fitted, log = harden_trees(estimator, schema.with_budget(settings.budget), data.raw["frames"]["train"],
                                   data.train.tensors[1].numpy(),  # type: ignore[attr-defined]
                                   target_fpr=data.raw.get("target_fpr", 0.01), rounds=rounds, seed=settings.seed)
        model.set_fitted(fitted, log)
        return Fitted(model, self.choose_threshold(model, data), [], time.perf_counter() - started)

    def training_plan(self, model: nn.Module, settings: TrainSettings) -> dict[str, Any]:
        """Trees: ``augmentation`` in ``rounds`` (none for ``method: standard``); epochs, learning rate and the
        method's name apply to the MLP only."""
        if not isinstance(model, TreeModel):
            return super().training_plan(model, settings)
        rounds = 0 if settings.method == "standard" else model.rounds
        return {"method": "augmentation" if rounds else "standard", "model_type": model.model_type, "rounds": rounds}

    def eval_attacks(self, model: nn.Module, space: PerturbationSpace, preset: str,
                     seed: int) -> tuple[str | list[Attack], bool]:
        """A tree model has no gradient: the tree attack (:class:`~domains.tabular.blackbox.TreeAttack`, at every
        budget) and no gradient-masking checks (they compare gradient attacks); :meth:`assess` adds transfer
        from a surrogate and a random search at the main budget."""
        trees = _tree_model(model)
        if trees is None:
            return super().eval_attacks(model, space, preset, seed)
        assert isinstance(space, SchemaSpace)
        return [TreeAttack(space, trees, float(getattr(model, "threshold", 0.5)), seed=seed)], False

    def model_arguments(self, data: DomainData) -> dict[str, Any]:
        """For ``--model-factory``: ``n_features`` (width of the raw input, the attack variable: one value
        per numeric column and one one-hot block per categorical, in schema order), ``classes`` (2; logit 1
        is fraud), and ``schema`` (its dict form), ``mean`` and ``std``, from which
        ``SchemaEncoder(Schema.from_dict(schema), mean, std)`` builds the reference model's preprocessing."""
        schema: Schema = data.raw["schema"]
        return {"n_features": layout(schema).width,
                "classes": 2, "schema": schema.to_dict(), "mean": data.raw["mean"], "std": data.raw["std"]}

    def factory_spec(self, factory: str, data: DomainData) -> dict[str, Any]:
        """A ``--model-factory`` model (a torch module); refused with a tree ``model_type``."""
        if data.raw.get("model_type", "mlp") != "mlp":
            raise ConfigError(f"--model-factory builds a torch model and --model-type {data.raw['model_type']} asks "
                              "for trees: drop one of them")
        return super().factory_spec(factory, data)

    # ----------------------------------------------------------------- threat model
    def space(self, budget: float, data: DomainData) -> ContinuousSpace:
        return SparseSchemaSpace(data.raw["schema"], budget)

    def training_method(self, name: str, data: DomainData, budget: float) -> Method:
        """``pgd+search``: PGD over the schema space, then the categorical search from each PGD point
        (:class:`~domains.tabular.attacks.SearchTraining`), for data whose categories carry the attack."""
        if name != "pgd+search":
            raise ConfigError(f"the tabular domain's own method is pgd+search, got {name!r}")
        return SearchTraining()

    def attackable(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        return y == 1

    def choose_threshold(self, model: nn.Module, data: DomainData) -> float | None:
        x, y = data.val.tensors  # type: ignore[attr-defined]
        return threshold_at_fpr(_scores(model, x)[y == 0], data.raw.get("target_fpr", 0.01))

    # ----------------------------------------------------------------- metrics and examples
    def assess(self, model: nn.Module, data: DomainData, report: Any) -> Assessment:
        """ROC-AUC, AP and the strongest constrained attack on every test fraud row.

        :func:`~domains.tabular.attacks.worst_case` (PGD-50 x 5 restarts over ``SchemaSpace`` and
        ``SparseSchemaSpace``, APGD-CE and APGD-margin, the categorical search, and the search again from
        the best row found), judged on repaired rows that pass ``schema.validate``, joins the report's
        worst case as ``strongest``: ``recall_attacked`` counts a fraud row as caught only if it
        survives the evaluation's attacks and this one. ``recall_attacked_strongest`` is this suite's
        alone; its rows are the evidence :meth:`write_examples` writes.
        """
        x, yt = data.test.tensors  # type: ignore[attr-defined]
        scores = _scores(model, x).numpy()
        out: dict[str, Any] = {
            "roc_auc": float(roc_auc_score(yt.numpy(), scores)),
            "average_precision": float(average_precision_score(yt.numpy(), scores)),
        }
        budget = float(report.threat.get("budget", data.raw["schema"].budget))
        idx = (yt == 1).nonzero().squeeze(1)
        if len(idx) == 0:
            return Assessment(out)
        schema: Schema = data.raw["schema"].with_budget(budget)
        original = data.raw["frames"]["test"].iloc[idx.numpy()]
        trees = _tree_model(model)
        if trees is None:
            found = worst_case(model, schema, x[idx], original, seed=0)
            fooled_by = {"strongest": found.table["fooled"].to_numpy(dtype=bool)}
        else:
            found = _tree_worst_case(trees, float(getattr(model, "threshold", 0.5)), schema, data, original,
                                     int(data.raw.get("queries", 300)))
            # the report holds the tree attack already (eval_attacks), at every budget: transfer and search join it
            fooled_by = {k: v for k, v in found.fooled_by.items() if k != "trees"}
        summary = found.summary()
        summary.pop("recall_clean")
        out.update(summary)
        fooled = found.table["fooled"].to_numpy(dtype=bool)
        survived: dict[str, torch.Tensor] = {}
        for label, evaded in fooled_by.items():
            survived[label] = torch.ones(len(yt), dtype=torch.bool)
            survived[label][idx] = torch.as_tensor(~evaded)
        column = data.raw.get("segment", _segment_column(schema, None))
        if column is not None:  # per segment: recall before the attacks and after the worst case
            robust = report.outcomes["robust"][idx].numpy()
            detected = found.table["detected_clean"].to_numpy(dtype=bool)
            caught = robust & detected & ~fooled
            segments = original[column].astype(str).to_numpy()
            names = [c for c in schema[column].categories or [] if c in set(segments)]
            out["recall_clean_per_segment"] = {c: float(detected[segments == c].mean()) for c in names}
            out["recall_attacked_worst_per_segment"] = {c: float(caught[segments == c].mean()) for c in names}
        evidence = {"positions": idx.numpy(), "found": found, "threshold": float(getattr(model, "threshold", 0.5))}
        return Assessment(out, survived, evidence)

    def write_examples(self, directory: Path, examples: Examples, data: DomainData) -> list[Path]:
        """``examples.csv``: one line per attacked test fraud row (adversarial values in the user's
        columns, ``fooled``, ``valid``, ``repair_failed``, ``shrunk``, ``cost``, ``changed``), and ``changes.csv``:
        one line per changed cell (original and adversarial value, cost).

        The rows are those of the strongest attack :meth:`assess` ran on this model (``examples.evidence``);
        without it, the ``examples`` given are written instead.
        """
        directory.mkdir(parents=True, exist_ok=True)
        schema: Schema = data.raw["schema"]
        frames = data.raw["frames"]["test"]
        stash = examples.evidence
        if stash is not None:
            found = stash["found"]
            positions = stash["positions"]
            original = frames.iloc[positions][schema.names]
            table = found.rows.copy()
            table.insert(0, "label", 1)
            for k in found.table.columns:
                table[k] = found.table[k].to_numpy()
            table["threshold"] = stash["threshold"]
            table.index = pd.Index(positions, name="index")
            cells = changes(schema, found.rows, original)
            cells["row"] = positions[original.index.get_indexer(cells["row"])] if len(cells) else cells["row"]
        else:
            n = len(examples.y)
            original = frames.iloc[:n]
            rows, info = repair(schema, examples.x_adv, examples.x, original)
            table = rows.copy()
            table.insert(0, "label", examples.y.numpy())
            table["detected_clean"] = examples.pred_clean.numpy() == 1
            # a row that had to shrink or revert to pass the schema is not claimed as fooling the model
            table["fooled"] = examples.success.numpy().astype(bool) & ~info["repair_failed"].to_numpy() & ~info[
                "shrunk"].to_numpy()
            table["valid"] = schema.validate(rows, original).to_numpy()
            for k in ("repair_failed", "shrunk", "cost", "changed"):
                table[k] = info[k].to_numpy()
            table.index.name = "index"
            cells = changes(schema, rows, original)
        paths = [directory / "examples.csv", directory / "changes.csv"]
        table.to_csv(paths[0])
        cells.to_csv(paths[1], index=False)
        return paths

    def examples_html(self, directory: Path) -> str:
        """The changed cells (original and adversarial value, cost) of up to 10 attacked fraud rows, those
        that evaded detection first."""
        rows_path, cells_path = directory / "examples.csv", directory / "changes.csv"
        if not (rows_path.is_file() and cells_path.is_file()):
            return ""
        rows, cells = pd.read_csv(rows_path, index_col="index"), pd.read_csv(cells_path, dtype={"row": int})
        changed = rows[rows.index.isin(cells["row"])].sort_values("fooled", ascending=False, kind="stable")
        places = {str(name): _places(part["original"]) for name, part in cells.groupby("column")}
        groups = [{"row": index, "fooled": "yes" if row["fooled"] else "no", "cost": f"{float(row['cost']):.4g}",
                   "cells": [{"column": str(cell["column"]),
                              "original": _shown(cell["original"], places[str(cell["column"])]),
                              "adversarial": _shown(cell["adversarial"], places[str(cell["column"])]),
                              "cost": f"{float(cell['cost']):.4g}"}
                             for _, cell in cells[cells["row"] == index].iterrows()]}
                  for index, row in changed.head(10).iterrows()]
        return render("examples.html.j2", __name__, n_changed=len(changed), n_rows=len(rows), groups=groups)

    # ----------------------------------------------------------------- persistence
    def save_model(self, model: nn.Module, directory: Path, spec: dict[str, Any],
                   threshold: float | None = None) -> None:
        """Weights and model.json (schema, standardisation, threshold) plus a readable ``schema.yaml``; a tree
        model in its library's own format instead of weights (``estimator.skops``, XGBoost's JSON, LightGBM's
        text; never a pickle) and its augmentation rounds in ``augmentation.csv``."""
        schema = spec["arguments"]["schema"] if "factory" in spec else spec["schema"]
        if isinstance(model, TreeModel):
            described, write = estimator_writer(model.prototype, model.fitted)
            directory.mkdir(parents=True, exist_ok=True)
            write(directory)
            meta = {"domain": self.name, "spec": spec, "threshold": threshold, **described}
            (directory / "model.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
            model.log.to_csv(directory / "augmentation.csv", index=False)
        else:
            super().save_model(model, directory, spec, threshold)
        Schema.from_dict(schema).dump(directory / "schema.yaml")

    def load_model(self, directory: str | Path, factory: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
        """The model a run or model folder holds: the MLP (safetensors), or a tree model (its library's file)."""
        path = model_folder(directory)
        meta = read_model_json(path / "model.json") if (path / "model.json").is_file() else {}
        if meta.get("domain") != self.name or meta.get("spec", {}).get("model_type", "mlp") == "mlp":
            return super().load_model(directory, factory)
        try:
            model = self.build_model(meta["spec"])
            parts = read_estimator(path, meta, path / "model.json")
        except RobustkitError:
            raise
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise ConfigError(f"{path}: not a readable robustkit tree model ({exc})") from None
        assert isinstance(model, TreeModel)
        model.prototype = parts[0]
        return model.set_fitted(parts[1]), meta


def _tree_model(model: nn.Module) -> TreeModel | None:
    """The tree model ``model`` is or decides with (a :class:`ThresholdModel` around it), else None."""
    inner = model.model if isinstance(model, ThresholdModel) else model
    return inner if isinstance(inner, TreeModel) else None


def _tree_worst_case(model: TreeModel, threshold: float, schema: Schema, data: DomainData, original: pd.DataFrame,
                     queries: int) -> WorstCase:
    """:func:`~domains.tabular.blackbox.evaluate_blackbox` (tree attack, transfer from a surrogate distilled on
    the training rows, random search) on the fraud rows ``original``, as the neural path's worst case."""
    target = schema.target or "label"
    labelled = Schema(list(schema.columns), schema.budget, target, list(schema.relations), list(schema.drop))
    found = evaluate_blackbox(model, data.raw["frames"]["train"], original[schema.names].assign(**{target: 1}),
                              labelled, threshold=threshold, queries=queries)
    rows, table = found["rows"], found["table"]
    table["valid"] = schema.validate(rows, original).to_numpy()
    table["repair_failed"] = np.logical_or.reduce(list(found["repair_failed_by"].values()))
    return WorstCase(rows, table, found["fooled_by"], found["repair_failed_by"])


def _segment_column(schema: Schema, name: str | None) -> str | None:
    """The categorical column that segments the fraud figures: ``name``, or the schema's first categorical one."""
    if name is None:
        return next((c.name for c in schema.columns if c.type == "categorical"), None)
    if name not in schema.names or schema[name].type != "categorical":
        choices = ", ".join(c.name for c in schema.columns if c.type == "categorical") or "none in this schema"
        raise ConfigError(f"options.segment must be a categorical column of the schema ({choices}), got {name!r}")
    return name


def _places(originals: pd.Series) -> int | None:
    """The decimal places a column's original values are written with (at most 6; 0 for whole numbers such as an
    integer column's), or None for a column of categories."""
    places = 0
    for value in originals:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        written = repr(number)
        if not math.isfinite(number) or "e" in written:
            return 6 if math.isfinite(number) else None
        places = max(places, 0 if number.is_integer() else len(written.split(".")[1]))
    return min(places, 6)


def _shown(value: Any, places: int | None) -> str:
    """A cell value for the report, numbers at the places of their column's original values; a value that has
    more is marked ``≈`` (the exact one is in changes.csv): the tree attack sets a value just past a split, where
    the rounded one may fall on the other side."""
    if places is None:
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    text = f"{number:.{places}f}"
    return text if not math.isfinite(number) or float(text) == number else f"≈{text}"
