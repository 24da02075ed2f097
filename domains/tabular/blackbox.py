"""Robustness of models without gradients (gradient-boosted trees, scikit-learn pipelines) under a schema.

Three attacks, all under the schema's threat model and judged at the operating threshold:

- **trees** (for a :class:`SklearnModel`): :func:`~domains.tabular.trees.tree_attack`, a beam search
  over the values just past the model's own split thresholds (read from the trees, or probed);
- **transfer**: PGD with restarts on a differentiable surrogate (a :class:`TabularMLP` distilled from
  the model's own decisions on the training rows), the resulting rows scored once by the model.
  Its robust recall is an **upper bound**: a better attack may find more.
- **search**: a query-budgeted gradient-free random search on the model itself
  (:class:`robustkit.RandomSearch`), each query a ``predict_proba`` call on real rows.

The worst case keeps a fraud row only if it survives every attack. Adversarial rows are repaired and
checked with ``schema.validate`` like every other tabular attack; per fraud row the cheapest evasion
found (or the row with the lowest score) is returned in the user's columns.

Example:
    >>> from sklearn.linear_model import LogisticRegression
    >>> from domains.tabular.synthetic import card_schema, generate
    >>> schema = card_schema()
    >>> df = generate(800, seed=0)
    >>> numeric = [c.name for c in schema.columns if c.numeric]
    >>> clf = SklearnModel(LogisticRegression(max_iter=500).fit(df[numeric], df["is_fraud"]), schema, numeric)
    >>> out = evaluate_blackbox(clf, df.iloc[:600], df.iloc[600:], schema, threshold=0.5, queries=20,
    ...                         pgd_steps=5, restarts=1, surrogate_epochs=1)
    >>> sorted(out["recall"])
    ['clean', 'search', 'transfer (upper bound)', 'trees', 'worst']
    >>> bool(schema.validate(out["rows"], df.loc[out["rows"].index]).all())
    True
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from domains.tabular.attacks import _Best, describe_changes, fraud_probability
from domains.tabular.model import TabularMLP
from domains.tabular.schema import Schema
from domains.tabular.space import SchemaSpace, decode, encode, repair
from domains.tabular.trees import TypedEstimator, tree_attack
from robustkit import PGD, AdversarialTrainer, ModelError, RandomSearch, ThresholdModel, Transfer
from robustkit.attacks.base import Attack, Best, Problem

__all__ = ["SklearnModel", "TreeAttack", "TreeModel", "distill_surrogate", "evaluate_blackbox"]


class SklearnModel(nn.Module):
    """A fitted classifier with ``predict_proba(DataFrame)`` seen as a module over the attack variable.

    The forward pass decodes the attack variable into rows (integers rounded, categoricals at their
    argmax), calls ``predict_proba`` and returns log-probabilities as logits. No gradient flows:
    attack it with :class:`robustkit.Transfer` or :class:`robustkit.RandomSearch`.

    Args:
        estimator: a fitted binary classifier (a scikit-learn estimator or ``Pipeline``).
        schema: the schema of its input rows.
        columns: the columns it was fitted on, in order (default: the schema's feature columns).
    """

    def __init__(self, estimator: Any, schema: Schema, columns: Sequence[str] | None = None) -> None:
        super().__init__()
        if not hasattr(estimator, "predict_proba"):
            raise ModelError(f"{type(estimator).__name__} has no predict_proba: pass a fitted probabilistic classifier")
        self.estimator = estimator
        self.schema = schema
        self.columns = list(columns) if columns is not None else schema.names
        unknown = [c for c in self.columns if c not in schema.names]
        if unknown:
            raise ModelError(f"the model reads column {unknown[0]!r} that the schema does not declare")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = decode(self.schema, x)[self.columns]
        try:
            proba = self.estimator.predict_proba(rows)
        except Exception as exc:  # the estimator's own failure: say whose
            raise ModelError(f"{type(self.estimator).__name__}.predict_proba failed on decoded rows: {exc}") from None
        p = torch.as_tensor(proba, dtype=torch.float64, device=x.device)
        if p.dim() != 2 or p.shape[1] != 2:
            raise ModelError(f"predict_proba must return two columns (not fraud, fraud), got shape {tuple(p.shape)}")
        return p.clamp_min(1e-12).log().to(x.dtype)


class TreeModel(SklearnModel):
    """A tree ensemble as ``robustkit harden tabular --model-type`` trains, judges and saves it.

    ``prototype`` is the unfitted estimator (:func:`~domains.tabular.trees.make_estimator`); until
    :meth:`set_fitted` gives the fitted one it scores every row 0.5 (P(fraud) = P(not fraud)), so the
    pipeline's shape probe of a model before training passes. ``rounds``: the augmentation rounds the
    hardened model is trained with; ``log``: the table :func:`~domains.tabular.trees.harden_trees` returned.
    """

    def __init__(self, prototype: Any, schema: Schema, model_type: str, rounds: int = 2) -> None:
        super().__init__(prototype, schema)
        self.prototype, self.model_type, self.rounds = prototype, model_type, rounds
        self.fitted: Any = None
        self.log = pd.DataFrame()

    def set_fitted(self, fitted: Any, log: pd.DataFrame | None = None) -> TreeModel:
        """Use the fitted estimator ``fitted`` (over :func:`~domains.tabular.trees.typed_frame` rows) from now on."""
        self.fitted, self.estimator = fitted, TypedEstimator(fitted, self.schema)
        self.log = pd.DataFrame() if log is None else log
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fitted is None:
            return torch.zeros(len(x), 2, dtype=x.dtype, device=x.device)
        return super().forward(x)


class TreeAttack(Attack):
    """:func:`~domains.tabular.trees.tree_attack` as a robustkit attack over a :class:`SchemaSpace`'s attack
    variable: the rows the inputs decode to are searched on ``trees`` at ``threshold`` and the rows found are
    encoded back (each valid under the schema at the space's budget), so :func:`robustkit.evaluate` runs it
    at every budget of a curve like any other attack.

    Example:
        >>> from domains.tabular.synthetic import card_schema, generate
        >>> from domains.tabular.trees import make_estimator, typed_frame
        >>> schema, df = card_schema(), generate(1500, seed=0)
        >>> fitted = make_estimator("hgb", 0).set_params(max_iter=20).fit(typed_frame(schema, df), df["is_fraud"])
        >>> trees = TreeModel(make_estimator("hgb", 0), schema, "hgb").set_fitted(fitted)
        >>> frauds = encode(schema, df[df["is_fraud"] == 1].head(20))
        >>> result = TreeAttack(SchemaSpace(schema), trees, 0.5)(ThresholdModel(trees, 0.5), frauds,
        ...                                                      torch.ones(20, dtype=torch.long))
        >>> bool(result.success.any())
        True
    """

    name = "trees"

    def __init__(self, space: SchemaSpace, trees: TreeModel, threshold: float, *, beam_width: int = 8,
                 seed: int = 0) -> None:
        super().__init__(space, seed=seed)
        if not isinstance(space, SchemaSpace):
            raise ModelError(f"TreeAttack searches a tabular SchemaSpace, got {type(space).__name__}")
        self.trees, self.threshold, self.beam_width = trees, float(threshold), beam_width

    def config(self) -> dict[str, Any]:
        return {"beam_width": self.beam_width, "threshold": self.threshold}

    def _run(self, problem: Problem) -> Best:
        assert isinstance(self.space, SchemaSpace)
        schema = self.space.schema.with_budget(float(self.space.eps))
        x = problem.x
        found = tree_attack(self.trees.estimator, schema, decode(schema, x), self.threshold,
                            columns=self.trees.columns, beam_width=self.beam_width)
        x_adv = encode(schema, found.rows).to(device=x.device, dtype=x.dtype)
        every = torch.arange(len(x), device=x.device)
        logits, loss = problem.evaluate(x_adv, every)
        best = Best(x, x.device)
        best.update(None, x_adv, loss, problem.success(logits, every))
        return best


def _scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(x).double(), dim=1)[:, 1]


def distill_surrogate(model: nn.Module, train: pd.DataFrame, schema: Schema, threshold: float = 0.5, *,
                      epochs: int = 10, hidden: Sequence[int] = (64, 64), seed: int = 0) -> TabularMLP:
    """A :class:`TabularMLP` trained to copy ``model``'s decisions at ``threshold`` on the rows of ``train``."""
    x = encode(schema, train)
    labels = (_scores(model, x) >= threshold).long()
    numeric = [c.name for c in schema.columns if c.numeric]
    spec = {"schema": schema.to_dict(), "mean": [float(train[c].mean()) for c in numeric],
            "std": [float(train[c].std()) for c in numeric], "hidden": list(hidden)}
    torch.manual_seed(seed)
    surrogate = TabularMLP(spec)
    weights = "balanced" if 0 < int(labels.sum()) < len(labels) else None
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=128, shuffle=True,
                                         generator=generator)
    trainer = AdversarialTrainer(surrogate, SchemaSpace(schema), "standard", class_weights=weights, seed=seed,
                                 progress=False)
    trainer.optimizer = torch.optim.Adam(surrogate.parameters(), lr=3e-3)
    trainer.fit(loader, epochs=epochs)
    return surrogate.eval()


def evaluate_blackbox(model: nn.Module, train: pd.DataFrame, test: pd.DataFrame, schema: Schema, *,
                      threshold: float, budget: float | None = None, queries: int = 300, pgd_steps: int = 50,
                      restarts: int = 3, surrogate: nn.Module | None = None, surrogate_epochs: int = 10,
                      trees: bool = True, beam_width: int = 8, seed: int = 0) -> dict[str, Any]:
    """Fraud recall of ``model`` at ``threshold`` on ``test``, clean and under the tree, transfer and search attacks.

    A fraud row counts as evaded only if its repaired row (the one returned to the user, valid under
    the schema) is scored below the threshold.

    Args:
        model: the model as a module over the attack variable (e.g. :class:`SklearnModel`).
        train: rows to distill the surrogate from (ignored when ``surrogate`` is given).
        test: rows with the target column; only fraud rows are attacked.
        schema: the threat model (``budget`` overrides its cost budget).
        threshold: the operating threshold on ``P(fraud)``.
        trees: run :func:`~domains.tabular.trees.tree_attack` (``beam_width``) on a :class:`SklearnModel`.

    Returns:
        ``{"recall": {"clean", "trees", "transfer (upper bound)", "search", "worst"}, "valid_share": {attack: share},
        "repair_failed_share": {attack: share}, "seconds": {attack: wall-clock seconds}, "n_fraud": int,
        "queries": int, "rows": DataFrame, "table": DataFrame, "fooled_by": {attack: bool per fraud row},
        "repair_failed_by": {attack: bool per fraud row}}``: ``rows`` holds per test fraud row (its
        index) the adversarial row kept, in the schema's columns (the cheapest evasion, else the lowest
        score), ``table`` its ``detected_clean``, ``fooled``, ``attack``, ``p_fraud_adversarial``, ``cost``
        and ``changed``.
    """
    if schema.target is None or schema.target not in test.columns:
        raise ModelError("the test rows need the schema's target column to know which rows are fraud")
    schema = schema if budget is None else schema.with_budget(budget)
    space = SchemaSpace(schema)
    decided = ThresholdModel(model, threshold)
    if surrogate is None:
        surrogate = distill_surrogate(model, train, schema, threshold, epochs=surrogate_epochs, seed=seed)
    frauds = test[test[schema.target].to_numpy() == 1][schema.names]
    x = encode(schema, frauds)
    y = torch.ones(len(x), dtype=torch.long)
    with torch.no_grad():
        caught = decided(x).argmax(1) == 1
    p_clean = fraud_probability(decided, x).numpy()
    best = _Best(frauds, p_clean, caught.numpy())
    attacks: dict[str, Any] = {}
    if trees and isinstance(model, SklearnModel):
        def run_trees() -> tuple[pd.DataFrame, np.ndarray]:
            found = tree_attack(model.estimator, schema, frauds, threshold, columns=model.columns,
                                beam_width=beam_width)
            return found.rows, found.table["repair_failed"].to_numpy()

        attacks["trees"] = run_trees
    for label, attack in (("transfer (upper bound)",
                           Transfer(PGD(space, steps=pgd_steps, restarts=restarts, early_stop=False, seed=seed),
                                    ThresholdModel(surrogate, threshold))),
                          ("search", RandomSearch(space, queries=queries, seed=seed))):
        def run(attack: Any = attack) -> tuple[pd.DataFrame, np.ndarray]:
            rows, info = repair(schema, attack(decided, x, y).x_adv, x, frauds)
            return rows, info["repair_failed"].to_numpy()

        attacks[label] = run
    recall = {"clean": float(caught.float().mean())}
    valid, failed, seconds, fooled_by, failed_by = {}, {}, {}, {}, {}
    survived = caught.clone()
    for label, attack_rows in attacks.items():
        started = time.perf_counter()
        rows, repair_failed = attack_rows()
        seconds[label] = time.perf_counter() - started
        ok = schema.validate(rows, frauds).to_numpy()
        if not ok.all():  # never judge (or return) an invalid row
            rows.loc[~ok, :] = frauds.loc[~ok, schema.names].to_numpy()
        x_rows = encode(schema, rows)
        with torch.no_grad():
            still = decided(x_rows).argmax(1) == 1
        recall[label] = float((caught & still).float().mean())
        survived &= still
        valid[label] = float(ok.mean())
        failed[label] = float(repair_failed.mean())
        fooled = (caught & ~still).numpy()
        fooled_by[label], failed_by[label] = fooled, repair_failed
        best.offer(label, np.arange(len(rows)), rows, fooled, fraud_probability(decided, x_rows).numpy(),
                   schema.cost(rows, frauds).to_numpy(), ~ok)
    recall["worst"] = float(survived.float().mean())
    adversarial = best.rows.astype({c.name: frauds[c.name].dtype for c in schema.columns})
    table = pd.DataFrame({"detected_clean": best.detected, "fooled": best.fooled, "attack": best.attack,
                          "p_fraud_adversarial": best.p, "cost": schema.cost(adversarial, frauds).to_numpy(),
                          "changed": describe_changes(schema, adversarial, frauds)}, index=frauds.index)
    return {"recall": recall, "valid_share": valid, "repair_failed_share": failed, "seconds": seconds,
            "n_fraud": len(frauds), "queries": queries, "rows": adversarial, "table": table, "fooled_by": fooled_by,
            "repair_failed_by": failed_by}
