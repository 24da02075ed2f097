"""Attacking and hardening tree ensembles (gradient-boosted trees, forests) under a schema.

A tree ensemble is piecewise constant: its score changes only where a column crosses one of the
model's split thresholds, and gradients say nothing. So the only values worth trying for a mutable
numeric column are those just past a threshold, and of each stretch between two thresholds the one
nearest the original value, the cheapest (:func:`candidate_moves`). Categorical columns try every
category.

- :func:`split_thresholds` reads the thresholds of scikit-learn's ``HistGradientBoostingClassifier``,
  its tree ensembles (``GradientBoosting``, ``RandomForest``, ``ExtraTrees``, a single tree),
  XGBoost (its JSON dump) and LightGBM (its model dump); :func:`probe_thresholds` finds them for any
  model with ``predict_proba`` by scanning each column and bisecting where the score moves.
- :func:`tree_attack` is a beam search over columns: each round changes one more column of each row
  kept, to each candidate value, scores every candidate of every row in one batched ``predict_proba``,
  and keeps the ``beam_width`` lowest-scoring changes per row. A row stops at the first round that
  evades the operating threshold, with the cheapest evasion of that round. Bounds, directions,
  immutables, relations and the budget are checked before scoring, and every returned row passes
  ``schema.validate``.
- :func:`harden_trees` is adversarial data augmentation in rounds: attack the current model on the
  training fraud rows, add the valid evasions (labelled fraud, with a weight) and refit.

Models read rows as :func:`typed_frame` gives them: numeric columns as floats, categorical columns
as pandas categoricals over the schema's categories (what HistGradientBoosting, XGBoost with
``enable_categorical=True`` and LightGBM take natively).

Example:
    >>> from sklearn.ensemble import HistGradientBoostingClassifier
    >>> from domains.tabular.synthetic import card_schema, generate
    >>> schema, df = card_schema(), generate(2000, seed=0)
    >>> X, y = typed_frame(schema, df), df["is_fraud"]
    >>> model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X, y)
    >>> frauds = df[df["is_fraud"] == 1].head(20)
    >>> found = tree_attack(model, schema, frauds, threshold=0.5)
    >>> bool(found.table["valid"].all()), list(found.fooled_by)
    (True, ['trees'])
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import clone

from domains.tabular.attacks import WorstCase, describe_changes
from domains.tabular.schema import Schema
from robustkit.errors import ConfigError, DataError, ModelError
from robustkit.evaluation.binary import threshold_at_fpr

__all__ = ["TREE_TYPES", "TypedEstimator", "candidate_moves", "harden_trees", "make_estimator", "probe_thresholds",
           "split_thresholds", "tree_attack", "typed_frame"]

#: rows per ``predict_proba`` call (bounds the memory of one scoring batch)
CHUNK = 200_000


#: the tree ensembles ``robustkit harden tabular --model-type`` trains: the package each needs (to train it,
#: or for HistGradientBoosting to save it without a pickle) and the extra that installs it
TREE_TYPES = {"hgb": ("skops", "skops"), "xgboost": ("xgboost", "trees"), "lightgbm": ("lightgbm", "trees")}


def require_library(model_type: str) -> None:
    """Refuse a ``model_type`` whose package is not installed (all are optional extras)."""
    library, extra = TREE_TYPES[model_type]
    try:
        importlib.import_module(library)
    except ImportError:
        raise ConfigError(f"--model-type {model_type} needs the {library} package, which is not installed: "
                          f'pip install -e ".[{extra}]"') from None


def make_estimator(model_type: str, seed: int) -> Any:
    """An unfitted tree ensemble of ``model_type`` (a key of :data:`TREE_TYPES`, library defaults otherwise) that
    reads :func:`typed_frame` rows, its categories natively; XGBoost and LightGBM are imported only here.

    Example:
        >>> make_estimator("hgb", seed=0).random_state
        0
    """
    if model_type != "hgb":  # HistGradientBoosting needs skops only to be saved
        require_library(model_type)
    if model_type == "xgboost":
        import xgboost

        return xgboost.XGBClassifier(enable_categorical=True, tree_method="hist", random_state=seed)
    if model_type == "lightgbm":
        import lightgbm

        return lightgbm.LGBMClassifier(random_state=seed, verbose=-1)
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=seed)


def typed_frame(schema: Schema, df: pd.DataFrame) -> pd.DataFrame:
    """``df``'s schema columns as a tree model reads them: numbers as float64, categories as pandas
    categoricals over the schema's categories (so every model sees the same category codes)."""
    out: dict[str, Any] = {}
    for c in schema.columns:
        if c.numeric:
            out[c.name] = df[c.name].to_numpy(dtype=np.float64)
        else:
            out[c.name] = pd.Categorical(df[c.name].astype(str), categories=c.categories)
    return pd.DataFrame(out, index=df.index)


def fraud_scores(estimator: Any, schema: Schema, rows: pd.DataFrame, columns: Sequence[str] | None = None
                 ) -> np.ndarray:
    """P(fraud) (``predict_proba`` column 1) of ``rows`` in chunks of :data:`CHUNK` rows."""
    frame = typed_frame(schema, rows)
    if columns is not None:
        frame = frame[list(columns)]
    parts = []
    for start in range(0, len(frame), CHUNK):
        try:
            proba = np.asarray(estimator.predict_proba(frame.iloc[start:start + CHUNK]), dtype=np.float64)
        except Exception as exc:  # the estimator's own failure: say whose
            raise ModelError(f"{type(estimator).__name__}.predict_proba failed on the schema's rows: {exc}") from None
        if proba.ndim != 2 or proba.shape[1] != 2:
            raise ModelError(f"predict_proba must return two columns (not fraud, fraud), got shape {proba.shape}")
        parts.append(proba[:, 1])
    return np.concatenate(parts) if parts else np.zeros(0)


class TypedEstimator:
    """A fitted model over :func:`typed_frame` rows that takes rows as the user holds them (categories as
    strings): what :class:`~domains.tabular.blackbox.SklearnModel` passes. :func:`split_thresholds` reads
    the trees of ``estimator_``.

    Example:
        >>> from sklearn.ensemble import HistGradientBoostingClassifier
        >>> from domains.tabular.synthetic import card_schema, generate
        >>> schema, df = card_schema(), generate(500, seed=0)
        >>> trees = HistGradientBoostingClassifier(max_iter=5).fit(typed_frame(schema, df), df["is_fraud"])
        >>> TypedEstimator(trees, schema).predict_proba(df[schema.names].head(2)).shape
        (2, 2)
    """

    def __init__(self, estimator: Any, schema: Schema) -> None:
        self.estimator_, self.schema = estimator, schema

    def predict_proba(self, rows: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.estimator_.predict_proba(typed_frame(self.schema, rows)))


# ----------------------------------------------------------------------------- reading thresholds
def _hgb(model: Any, names: list[str]) -> Iterator[tuple[str, float]]:
    pre = getattr(model, "_preprocessor", None)
    if pre is not None:  # with categorical features the trees read the categorical columns first
        order: list[str] = []
        for _, t, cols in pre.transformers_:
            if not (isinstance(t, str) and t == "drop"):
                selected = np.asarray(cols)
                order += [names[int(i)] for i in (np.flatnonzero(selected) if selected.dtype == bool else selected)]
        names = order
    for per_class in model._predictors:
        for predictor in per_class:
            nodes = predictor.nodes
            split = ~nodes["is_leaf"].astype(bool) & ~nodes["is_categorical"].astype(bool)
            for f, t in zip(nodes["feature_idx"][split], nodes["num_threshold"][split], strict=True):
                yield names[int(f)], float(t)


def _sklearn_trees(model: Any, names: list[str]) -> Iterator[tuple[str, float]]:
    trees = [model] if hasattr(model, "tree_") else np.asarray(model.estimators_, dtype=object).ravel().tolist()
    for tree in trees:
        inner = tree.tree_
        split = inner.feature >= 0
        for f, t in zip(inner.feature[split], inner.threshold[split], strict=True):
            yield names[int(f)], float(t)


def _xgboost(model: Any, names: list[str]) -> Iterator[tuple[str, float]]:
    booster = model.get_booster()
    known = list(booster.feature_names or names)

    def walk(node: dict[str, Any]) -> Iterator[tuple[str, float]]:
        condition = node.get("split_condition")
        if "split" in node and isinstance(condition, int | float) and "categories" not in node:
            split = str(node["split"])
            name = split if split in known else known[int(split.lstrip("f"))]
            yield name, float(condition)
        for child in node.get("children", []):
            yield from walk(child)

    for text in booster.get_dump(dump_format="json"):
        yield from walk(json.loads(text))


def _lightgbm(model: Any, names: list[str]) -> Iterator[tuple[str, float]]:
    dump = model.booster_.dump_model()
    known = list(dump.get("feature_names") or names)

    def walk(node: dict[str, Any]) -> Iterator[tuple[str, float]]:
        if "split_feature" in node:
            if node.get("decision_type") == "<=":
                yield known[int(node["split_feature"])], float(node["threshold"])
            for side in ("left_child", "right_child"):
                yield from walk(node[side])

    for tree in dump["tree_info"]:
        yield from walk(tree["tree_structure"])


def split_thresholds(estimator: Any, schema: Schema) -> dict[str, np.ndarray] | None:
    """Per numeric schema column, the sorted distinct split thresholds of the fitted ``estimator``'s trees,
    or None for a model whose trees this cannot read (then use :func:`probe_thresholds`).

    Reads scikit-learn's ``HistGradientBoosting*``, tree ensembles and single trees, XGBoost's and
    LightGBM's scikit-learn estimators, a model with a ``split_pairs()`` method yielding ``(column,
    threshold)`` (:class:`~domains.tabular.robust_trees.RobustBoostedTrees`), and an estimator wrapping one
    of these as ``estimator_`` (a fitted :class:`~domains.tabular.estimator.RobustTabularClassifier` on
    trees). Categorical splits are skipped: the attack tries every category.

    Example:
        >>> import pandas as pd
        >>> from sklearn.tree import DecisionTreeClassifier
        >>> from domains.tabular.schema import Column, Schema
        >>> schema = Schema([Column("a", mutable=True, lower=0, upper=10)])
        >>> tree = DecisionTreeClassifier(max_depth=1).fit(pd.DataFrame({"a": [1.0, 2, 8, 9]}), [0, 0, 1, 1])
        >>> split_thresholds(tree, schema)["a"].tolist()
        [5.0]
    """
    inner = getattr(estimator, "estimator_", None)
    if inner is not None and hasattr(inner, "predict_proba"):
        return split_thresholds(inner, schema)
    names = [str(n) for n in getattr(estimator, "feature_names_in_", schema.names)]
    if hasattr(estimator, "_predictors"):
        pairs = _hgb(estimator, names)
    elif hasattr(estimator, "booster_") and hasattr(estimator.booster_, "dump_model"):
        pairs = _lightgbm(estimator, names)
    elif hasattr(estimator, "get_booster"):
        pairs = _xgboost(estimator, names)
    elif callable(getattr(estimator, "split_pairs", None)):  # a model naming its own splits (robust_trees)
        pairs = estimator.split_pairs()
    elif hasattr(estimator, "tree_") or (hasattr(estimator, "estimators_")
                                         and all(hasattr(t, "tree_") for t in np.ravel(estimator.estimators_))):
        pairs = _sklearn_trees(estimator, names)
    else:
        return None
    found: dict[str, list[float]] = {c.name: [] for c in schema.columns if c.numeric}
    for name, t in pairs:
        if name in found and math.isfinite(t):
            found[name].append(t)
    return {name: np.unique(np.asarray(ts, dtype=np.float64)) for name, ts in found.items()}


def _reach(schema: Schema, rows: pd.DataFrame, name: str) -> tuple[float, float]:
    """The values column ``name`` of ``rows`` can reach within the bounds and the budget."""
    c = schema[name]
    values = rows[name].to_numpy(dtype=np.float64)
    step = schema.budget / c.cost
    lo, hi = float(values.min()) - step, float(values.max()) + step
    if c.lower is not None:
        lo = max(lo, c.lower)
    if c.upper is not None:
        hi = min(hi, c.upper)
    return lo, hi


def probe_thresholds(estimator: Any, schema: Schema, rows: pd.DataFrame, *, columns: Sequence[str] | None = None,
                     grid: int = 64, bisections: int = 30, references: int = 16) -> dict[str, np.ndarray]:
    """Split thresholds of any ``predict_proba`` model, found by probing: per mutable numeric column,
    the score of ``references`` rows of ``rows`` along a grid of ``grid`` values over what the budget
    reaches, then bisection of every grid step where some row's score moved (integer columns: every
    whole value when there are at most 1024, so the cut lies half-way between two).

    A threshold that no reference row's score reveals, or two within one grid step, can be missed:
    thresholds read from the model (:func:`split_thresholds`) are exact.
    """
    found: dict[str, np.ndarray] = {}
    ref = rows.iloc[np.linspace(0, len(rows) - 1, min(references, len(rows))).round().astype(int)][schema.names]
    for c in schema.columns:
        if not (c.numeric and c.mutable):
            continue
        lo, hi = _reach(schema, rows, c.name)
        whole = c.discrete and hi - lo <= 1024
        values = np.arange(math.ceil(lo), math.floor(hi) + 1, dtype=np.float64) if whole else np.linspace(lo, hi, grid)
        if len(values) < 2:
            found[c.name] = np.zeros(0)
            continue
        probe = ref.loc[ref.index.repeat(len(values))].reset_index(drop=True)
        probe[c.name] = np.tile(values, len(ref))
        score = fraud_scores(estimator, schema, probe, columns).reshape(len(ref), len(values))
        moved = score[:, 1:] != score[:, :-1]  # (references, grid - 1)
        r, g = np.nonzero(moved)
        if whole or not len(g):
            found[c.name] = np.unique(values[g] + 0.5) if whole else np.zeros(0)
            continue
        left, right = values[g].copy(), values[g + 1].copy()
        base, start = ref.iloc[r].reset_index(drop=True), score[r, g]
        for _ in range(bisections):
            mid = (left + right) / 2
            base[c.name] = mid
            same = fraud_scores(estimator, schema, base, columns) == start
            left, right = np.where(same, mid, left), np.where(same, right, mid)
        found[c.name] = np.unique((left + right) / 2)
    return found


# ----------------------------------------------------------------------------- candidate values
def _sides(c: Any, t: np.ndarray) -> np.ndarray:
    """Values just below and just above each threshold (whole numbers for integer columns): whichever way
    a library breaks ties (``x <= t`` or ``x < t``), and wide enough for float32 models."""
    if c.discrete:
        below = np.where(t == np.floor(t), t - 1, np.floor(t))
        return np.concatenate([below, np.floor(t) + 1])
    d = 1e-6 * np.maximum(1.0, np.abs(t))
    return np.concatenate([t - d, t + d])


def candidate_moves(schema: Schema, original: pd.DataFrame, thresholds: dict[str, np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every single-column change worth trying, as flat arrays ``(row, column, value, cost)`` sorted by row.

    ``column`` indexes the schema's columns; ``value`` is the number, or the category's index for a
    categorical column. Numeric columns take the values on either side of each threshold (the
    cheapest point of each stretch between thresholds), within bounds, direction and budget;
    categorical columns every other category. A move alone may still break a relation: the search
    checks relations on whole rows.
    """
    limit = schema.budget * (1 + 1e-9)
    rows, cols, vals, costs = [], [], [], []
    for k, c in enumerate(schema.columns):
        if not c.mutable:
            continue
        if c.numeric:
            o = original[c.name].to_numpy(dtype=np.float64)
            v = _sides(c, np.asarray(thresholds.get(c.name, np.zeros(0)), dtype=np.float64))
            v = np.unique(np.clip(v, -np.inf if c.lower is None else c.lower, np.inf if c.upper is None else c.upper))
            ok = v[None, :] != o[:, None]
            if c.direction == "increase":
                ok &= v[None, :] > o[:, None]
            elif c.direction == "decrease":
                ok &= v[None, :] < o[:, None]
            cost = c.cost * np.abs(v[None, :] - o[:, None])
        else:
            codes = pd.Categorical(original[c.name].astype(str), categories=c.categories).codes
            v = np.arange(len(c.categories or []), dtype=np.float64)
            ok = v[None, :] != codes[:, None]
            cost = np.full(ok.shape, c.cost)
        ok &= cost <= limit
        i, j = np.nonzero(ok)
        rows.append(i)
        cols.append(np.full(len(i), k))
        vals.append(v[j])
        costs.append(cost[i, j])
    if not rows:
        empty = np.zeros(0)
        return empty.astype(np.int64), empty.astype(np.int64), empty, empty
    row, col, val, cost = (np.concatenate(a) for a in (rows, cols, vals, costs))
    order = np.argsort(row, kind="stable")
    return row[order], col[order].astype(np.int64), val[order], cost[order]


def _values(schema: Schema, df: pd.DataFrame) -> np.ndarray:
    """Rows as a float matrix: numbers, and category indices for categorical columns."""
    out = np.empty((len(df), len(schema.columns)))
    for k, c in enumerate(schema.columns):
        if c.numeric:
            out[:, k] = df[c.name].to_numpy(dtype=np.float64)
        else:
            out[:, k] = pd.Categorical(df[c.name].astype(str), categories=c.categories).codes
    return out


def _frame(schema: Schema, values: np.ndarray) -> pd.DataFrame:
    """The inverse of :func:`_values` (integer columns as int64)."""
    out: dict[str, Any] = {}
    for k, c in enumerate(schema.columns):
        if c.numeric:
            out[c.name] = np.round(values[:, k]).astype(np.int64) if c.discrete else values[:, k]
        else:
            out[c.name] = np.asarray(c.categories, dtype=object)[values[:, k].astype(np.int64)]
    return pd.DataFrame(out)


def _relations_hold(schema: Schema, values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    ok = np.ones(len(values), dtype=bool)
    index = {c.name: k for k, c in enumerate(schema.columns)}
    for r in schema.relations:
        now = {n: values[:, index[n]] for n in r.coefficients}
        before = {n: reference[:, index[n]] for n in r.coefficients}
        ok &= np.asarray(r.holds(now, before), dtype=bool)
    return ok


# ----------------------------------------------------------------------------- the search
def tree_attack(estimator: Any, schema: Schema, original: pd.DataFrame, threshold: float, *,
                thresholds: dict[str, np.ndarray] | None = None, columns: Sequence[str] | None = None,
                beam_width: int = 8, max_changes: int | None = None) -> WorstCase:
    """Beam search for the cheapest valid change of each fraud row that a tree model scores below ``threshold``.

    Args:
        estimator: a fitted classifier with ``predict_proba`` over :func:`typed_frame` rows (column 1: fraud).
        schema: the threat model.
        original: the rows to attack (the schema's columns; other columns are ignored).
        threshold: the operating threshold on P(fraud): a row evades when its score drops below it.
        thresholds: per numeric column the split thresholds to try (default: :func:`split_thresholds`,
            or :func:`probe_thresholds` on ``original`` for a model whose trees cannot be read).
        columns: the columns the estimator reads, in order (default: the schema's).
        beam_width: changed rows kept per original row after each round.
        max_changes: most columns changed per row (default: every mutable column).

    Returns:
        a :class:`~domains.tabular.attacks.WorstCase` whose ``rows`` are the adversarial rows (the
        original where nothing lowered the score), each passing ``schema.validate``, and whose
        ``table`` holds per row ``detected_clean``, ``p_fraud_clean``, ``p_fraud_adversarial``,
        ``fooled``, ``valid``, ``cost``, ``changed`` and ``queries`` (rows scored for it).
    """
    if not isinstance(beam_width, int) or beam_width < 1:
        raise ConfigError(f"beam_width must be an integer >= 1, got {beam_width!r}")
    if not 0 <= threshold <= 1:
        raise ConfigError(f"threshold must lie between 0 and 1 (a probability), got {threshold!r}")
    missing = [n for n in schema.names if n not in original.columns]
    if missing:
        raise DataError(f"the rows to attack lack column {missing[0]!r} that the schema declares")
    original = original[schema.names]
    if thresholds is None:
        thresholds = split_thresholds(estimator, schema)
    if thresholds is None:
        thresholds = probe_thresholds(estimator, schema, original, columns=columns) if len(original) else {}
    n, width = len(original), len(schema.columns)
    base = _values(schema, original)
    p_clean = fraud_scores(estimator, schema, original, columns) if n else np.zeros(0)
    detected = p_clean >= threshold
    move_row, move_col, move_val, move_cost = candidate_moves(schema, original, thresholds)
    starts = np.searchsorted(move_row, np.arange(n + 1))
    best_values, best_p, best_cost = base.copy(), p_clean.copy(), np.zeros(n)
    fooled, queries = np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64)
    limit = schema.budget * (1 + 1e-9)
    # the beam: per state its original row, values, cost and the columns it has changed
    owner = np.flatnonzero(detected)
    values, cost, used = base[owner], np.zeros(len(owner)), np.zeros((len(owner), width), dtype=bool)
    rounds = sum(c.mutable for c in schema.columns) if max_changes is None else int(max_changes)
    for _ in range(rounds):
        if not len(owner):
            break
        counts = starts[owner + 1] - starts[owner]
        state = np.repeat(np.arange(len(owner)), counts)
        move = np.repeat(starts[owner], counts) + np.arange(len(state)) - np.repeat(np.cumsum(counts) - counts, counts)
        keep = ~used[state, move_col[move]] & (cost[state] + move_cost[move] <= limit)
        state, move = state[keep], move[keep]
        new = values[state].copy()
        new[np.arange(len(state)), move_col[move]] = move_val[move]
        new_owner = owner[state]
        keep = _relations_hold(schema, new, base[new_owner])
        # the same row reached by changing its columns in another order: score it once
        _, first = np.unique(np.column_stack([new_owner[keep], new[keep]]), axis=0, return_index=True)
        pick = np.flatnonzero(keep)[first]
        state, move, new, new_owner = state[pick], move[pick], new[pick], new_owner[pick]
        if not len(state):
            break
        new_cost = cost[state] + move_cost[move]
        new_used = used[state].copy()
        new_used[np.arange(len(state)), move_col[move]] = True
        p = fraud_scores(estimator, schema, _frame(schema, new), columns)
        np.add.at(queries, new_owner, 1)
        # per original row: the cheapest evasion of this round, else the lowest score so far
        evades = p < threshold
        order = np.lexsort((p, np.where(evades, new_cost, 0.0), ~evades, new_owner))
        head = order[np.r_[True, new_owner[order][1:] != new_owner[order][:-1]]]
        who = new_owner[head]
        better = evades[head] | (p[head] < best_p[who])
        best_values[who[better]], best_p[who[better]], best_cost[who[better]] = new[head[better]], p[head[better]], \
            new_cost[head[better]]
        fooled[who[evades[head]]] = True
        # the beam: per row not yet evaded, the lowest scores and (cost-aware) the largest drops per unit
        # of cost, half the width each, so that cheap moves that leave budget for more columns stay in
        alive = ~fooled[new_owner]
        gain = (p_clean[new_owner] - p) / np.maximum(new_cost, 1e-12)
        kept = np.zeros(len(p), dtype=bool)
        for key, width_ in ((p, beam_width - beam_width // 2), (-gain, beam_width // 2)):
            order = np.lexsort((new_cost, key, new_owner))
            order = order[alive[order]]
            rank = np.arange(len(order)) - np.searchsorted(new_owner[order], new_owner[order])
            kept[order[rank < width_]] = True
        order = np.flatnonzero(kept)
        owner, values, cost, used = new_owner[order], new[order], new_cost[order], new_used[order]
    rows = _frame(schema, best_values)
    rows.index = original.index
    valid = schema.validate(rows, original).to_numpy()
    if not valid.all():  # not expected: the search checks every rule; never hand back an invalid row
        rows.loc[~valid, :] = original.loc[~valid, schema.names].to_numpy()
        best_p[~valid], fooled[~valid] = p_clean[~valid], False
    rows = rows.astype({c.name: original[c.name].dtype for c in schema.columns})
    table = pd.DataFrame({
        "detected_clean": detected, "p_fraud_clean": p_clean, "p_fraud_adversarial": best_p,
        "fooled": fooled & detected, "valid": schema.validate(rows, original).to_numpy(),
        "repair_failed": ~valid, "attack": np.where(fooled, "trees", "none"),
        "cost": schema.cost(rows, original).to_numpy(), "changed": describe_changes(schema, rows, original),
        "queries": queries,
    }, index=original.index)
    return WorstCase(rows, table, {"trees": table["fooled"].to_numpy()}, {"trees": ~valid})


# ----------------------------------------------------------------------------- hardening
def harden_trees(estimator: Any, schema: Schema, X: pd.DataFrame, y: Any, *, target_fpr: float = 0.01,
                 rounds: int = 2, weight: float = 1.0, folds: int = 2, beam_width: int = 4, seed: int = 0
                 ) -> tuple[Any, pd.DataFrame]:
    """Adversarial data augmentation in rounds: attack the training fraud rows with :func:`tree_attack`,
    add the valid evasions labelled fraud (sample weight ``weight``), refit; the last fit uses every row.

    The rows of each of ``folds`` folds are attacked on a model fitted without them (and with the
    evasions so far), at the threshold giving ``target_fpr`` on that fold's legitimate rows: trees fit
    their own training rows so closely that attacking them finds few of the evasions unseen rows allow.

    Args:
        estimator: an unfitted classifier with ``fit(X, y, sample_weight=...)`` and ``predict_proba``
            over :func:`typed_frame` rows (cloned, never changed).
        schema: the threat model.
        X, y: training rows (the schema's columns) and labels (1 = fraud).
        target_fpr: the operating false-positive rate the attack aims below.
        rounds: attack-and-refit rounds.
        weight: sample weight of each added evasion (the original rows weigh 1).
        folds: folds of the cross-fitted attack (>= 2).
        beam_width: of the attack while training.

    Returns:
        the final fitted model and a table per round and fold: ``round``, ``fold``, ``threshold``,
        ``attacked`` (fraud rows), ``evaded`` and ``added`` (evasions in the training set before it).
    """
    if not isinstance(rounds, int) or rounds < 0:
        raise ConfigError(f"rounds must be an integer >= 0, got {rounds!r}")
    if not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"folds must be an integer >= 2, got {folds!r}")
    if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
        raise ConfigError(f"weight must be a number > 0, got {weight!r}")
    labels = np.asarray(y).astype(np.int64)
    rows = X[schema.names].reset_index(drop=True)
    fold = np.random.default_rng(seed).permutation(len(rows)) % folds
    extra: list[pd.DataFrame] = []

    def fit(keep: np.ndarray) -> Any:
        added = pd.concat(extra, ignore_index=True) if extra else rows.iloc[:0]
        data = pd.concat([rows[keep], added], ignore_index=True)
        target = np.concatenate([labels[keep], np.ones(len(added), dtype=np.int64)])
        w = np.concatenate([np.ones(int(keep.sum())), np.full(len(added), float(weight))])
        return clone(estimator).fit(typed_frame(schema, data), target, sample_weight=w)

    log = []
    for r in range(rounds):
        found_rows = []
        for k in range(folds):
            model = fit(fold != k)
            held = fold == k
            legit = fraud_scores(model, schema, rows[held & (labels == 0)])
            t = threshold_at_fpr(torch.as_tensor(legit), target_fpr)
            target = rows[held & (labels == 1)]
            found = tree_attack(model, schema, target, t, beam_width=beam_width)
            evaded = found.table["fooled"].to_numpy()
            found_rows.append(found.rows[evaded])
            log.append({"round": r, "fold": k, "threshold": t, "attacked": len(target), "evaded": int(evaded.sum()),
                        "added": sum(map(len, extra))})
        extra.extend(found_rows)
    columns = ["round", "fold", "threshold", "attacked", "evaded", "added"]
    return fit(np.ones(len(rows), dtype=bool)), pd.DataFrame(log, columns=columns)
