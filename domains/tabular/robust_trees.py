"""Gradient-boosted trees with robust splitting: each split is scored as if the attacker moved fraud rows.

:class:`RobustBoostedTrees` is a small gradient-boosted tree learner (logistic loss, depth-limited trees,
shrinkage, split thresholds on quantile bins) whose split finder follows Chen et al. 2019 ("Robust
decision trees against adversarial examples"): when a node scores the split ``x_j <= t``, the training
rows that the attacker could carry across ``t`` form an ambiguous band, and the split is scored with the
whole band on one side. Where, ``band_side`` says:

- ``"attacker"`` (the default): the side the attacker would take it to, the one whose leaf then scores lower; if
  neither side is (the band on either side lifts that side above the other), the split gains nothing.
  A fraudster only ever lowers the score, and the smaller gain is not always where the fraud goes: a
  split that parts legitimate rows from legitimate rows, with every fraud row able to reach both sides,
  gains under Chen's score whichever side the band is put (the other side is purely legitimate),
  and the attacker then takes every fraud row to that purely legitimate leaf.
- ``"worst-gain"`` (Chen et al.'s approximation): the side that gives the smaller gain. Measured on the
  synthetic card data it keeps less recall under the tree attack than no band at all (the section
  "Robust splitting, measured" of ``docs/benchmarks.md``), hence not the default.

The threat model is the schema's:

- **which rows move**: only fraud rows (label 1). The attacker is a fraudster making a fraud row look
  legitimate; legitimate rows are never attacked, so they have no band.
- **how far**: on a mutable numeric column, ``budget / cost`` (whole units on integer columns), only in
  the column's allowed direction and within its bounds. The band is per column, with the whole budget
  spent there (as in Chen et al.'s per-feature reach): the attack may spend it on one column, so a split
  must withstand that. Relations between columns are not used to narrow the band (a wider band is
  the safe side).
- **categorical columns** split one category against the rest (``x_j == v``). A mutable categorical
  column whose cost fits the budget lets a fraud row take any category, so every fraud row is in the
  band of every split on it; such splits are scored with all fraud rows on the worse side. Immutable
  columns (and categories dearer than the budget) have no band.

Only the choice of split is robust: rows then go down the split by their actual values, and each leaf
takes the usual Newton step of its rows' gradients. (Sending the band's fraud rows to the worse side, or
to both sides, in training was tried and is not kept: see the robust-splitting section of
``docs/benchmarks.md``.)

``budget=0`` gives the same learner with no band: plain gradient boosting, the control that isolates
robust splitting from "this learner against HistGradientBoosting".

The numeric split thresholds are exposed by :meth:`RobustBoostedTrees.split_pairs`, so
:func:`~domains.tabular.trees.split_thresholds` gives :func:`~domains.tabular.trees.tree_attack` the exact
grid of this model. A row goes left when ``x <= t`` (numeric) or ``x == v`` (categorical); a missing
number or an unknown category goes right.

Example:
    >>> from domains.tabular.synthetic import card_schema, generate
    >>> from domains.tabular.trees import split_thresholds, tree_attack, typed_frame
    >>> schema, df = card_schema(), generate(2000, seed=0)
    >>> model = RobustBoostedTrees(schema, n_estimators=20).fit(typed_frame(schema, df), df["is_fraud"])
    >>> model.predict_proba(typed_frame(schema, df.head(2))).shape, model.classes_.tolist()
    ((2, 2), [0, 1])
    >>> len(split_thresholds(model, schema)["txn_count_24h"]) > 0
    True
    >>> bool(tree_attack(model, schema, df[df["is_fraud"] == 1].head(10), 0.5).table["valid"].all())
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from domains.tabular.schema import Schema
from robustkit.errors import ConfigError, DataError, ModelError

__all__ = ["RobustBoostedTrees"]

#: most entries of one (rows x trees) array while predicting (bounds the memory of a batch)
CELLS = 2_000_000
#: split kinds of a node: no split (every row goes left), numeric ``x <= t``, categorical ``x == v``
LEAF, NUMERIC, CATEGORY = 0, 1, 2


class RobustBoostedTrees(ClassifierMixin, BaseEstimator):
    """Gradient-boosted trees whose splits withstand ``schema``'s attacker (see the module docstring).

    Args:
        schema: the feature columns and what an attacker may change in a fraud row.
        budget: the attacker's budget the bands are drawn with (default: the schema's; 0: no band).
        n_estimators: boosting rounds (one tree each).
        learning_rate: shrinkage of each tree's leaf values.
        max_depth: depth of every tree (at most ``2 ** max_depth`` leaves).
        max_bins: most split thresholds per numeric column (quantiles of the training rows).
        min_samples_leaf: fewest training rows on either side of a split.
        l2_regularization: added to the hessian sum of every leaf and every split's score.
        band_side: where a split's score puts the band: ``"attacker"`` (on the side whose leaf scores
            lower, where the attacker would take it; when neither side is, the split gains nothing) or
            ``"worst-gain"`` (Chen et al.: on the side that gives the smaller gain).

    ``fit(X, y, sample_weight=None)`` takes the schema's columns (numbers; categories as strings or as
    pandas categoricals, as :func:`~domains.tabular.trees.typed_frame` gives them) and two classes, the
    larger of which (by sort order) is fraud.
    """

    def __init__(self, schema: Schema, budget: float | None = None, n_estimators: int = 200,
                 learning_rate: float = 0.1, max_depth: int = 4, max_bins: int = 64, min_samples_leaf: int = 20,
                 l2_regularization: float = 1.0, band_side: str = "attacker") -> None:
        self.schema = schema
        self.budget = budget
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.max_bins = max_bins
        self.min_samples_leaf = min_samples_leaf
        self.l2_regularization = l2_regularization
        self.band_side = band_side

    # ----------------------------------------------------------------- checks and data
    def _check_params(self) -> None:
        if not isinstance(self.schema, Schema):
            raise ConfigError(f"schema must be a domains.tabular Schema, got {type(self.schema).__name__}")
        for name, low in (("n_estimators", 1), ("max_depth", 1), ("max_bins", 2), ("min_samples_leaf", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        for name, positive in (("learning_rate", True), ("l2_regularization", False)):
            value = getattr(self, name)
            fine = isinstance(value, int | float) and math.isfinite(value) and (value > 0 if positive else value >= 0)
            if not fine:
                raise ConfigError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value!r}")
        if self.band_side not in ("worst-gain", "attacker"):
            raise ConfigError(f"band_side must be 'worst-gain' or 'attacker', got {self.band_side!r}")
        if self.budget is not None and not (isinstance(self.budget, int | float) and math.isfinite(self.budget)
                                            and self.budget >= 0):
            raise ConfigError(f"budget must be a number >= 0 or None (the schema's), got {self.budget!r}")

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        """``X``'s schema columns as floats: numbers, and category indices (-1: unknown) for categories."""
        schema: Schema = self.schema
        if not isinstance(X, pd.DataFrame):
            raise DataError(f"X must be a DataFrame with the schema's columns, got {type(X).__name__}")
        missing = [n for n in schema.names if n not in X.columns]
        if missing:
            raise DataError(f"X lacks column {missing[0]!r} that the schema declares")
        out = np.empty((len(X), len(schema.columns)))
        for k, c in enumerate(schema.columns):
            column = X[c.name]
            if c.numeric:
                out[:, k] = column.to_numpy(dtype=np.float64)
            elif isinstance(column.dtype, pd.CategoricalDtype) and list(column.cat.categories) == c.categories:
                out[:, k] = column.cat.codes.to_numpy()
            else:
                out[:, k] = pd.Categorical(column.astype(str), categories=c.categories).codes
        return out

    # ----------------------------------------------------------------- fitting
    def _bins(self, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Per column its split points (numeric: midpoints between distinct values at the quantiles;
        categorical: the category indices) and the bin of every row (an unknown category: the last bin)."""
        schema: Schema = self.schema
        points, binned = [], np.empty(x.shape, dtype=np.int64)
        for k, c in enumerate(schema.columns):
            if c.numeric:
                known = x[~np.isnan(x[:, k]), k]
                u = np.unique(known)
                j = np.arange(len(u) - 1)
                if len(j) > self.max_bins:  # the distinct values at the quantiles, each split from the next
                    quantiles = np.quantile(known, np.linspace(0, 1, self.max_bins + 1)[1:-1])
                    j = np.unique(np.searchsorted(u, quantiles))
                    j = j[j < len(u) - 1]
                points.append((u[j] + u[j + 1]) / 2)
                binned[:, k] = np.searchsorted(points[-1], x[:, k], side="left")
            else:
                n = len(c.categories or [])
                points.append(np.arange(n, dtype=np.float64))
                binned[:, k] = np.where(x[:, k] < 0, n, x[:, k])
        return points, binned

    def _band(self, x: np.ndarray, points: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For rows ``x`` (fraud), per numeric column the bins of the lowest and the highest value the attacker
        can carry them to, and per column whether a categorical one lets them take any category."""
        schema: Schema = self.schema
        budget = schema.budget if self.budget is None else float(self.budget)
        low, high = np.empty(x.shape, dtype=np.int64), np.empty(x.shape, dtype=np.int64)
        any_category = np.zeros(len(schema.columns), dtype=bool)
        for k, c in enumerate(schema.columns):
            if not c.numeric:
                any_category[k] = c.mutable and budget > 0 and c.cost <= budget * (1 + 1e-9)
                low[:, k] = high[:, k] = 0
                continue
            reach = budget / c.cost if c.mutable else 0.0
            if c.discrete:
                reach = math.floor(reach + 1e-9)
            up = reach if c.direction != "decrease" else 0.0
            down = reach if c.direction != "increase" else 0.0
            v = x[:, k]
            hi = np.maximum(v, np.minimum(v + up, np.inf if c.upper is None else c.upper))
            lo = np.minimum(v, np.maximum(v - down, -np.inf if c.lower is None else c.lower))
            low[:, k] = np.searchsorted(points[k], lo, side="left")
            high[:, k] = np.searchsorted(points[k], hi, side="left")
        return low, high, any_category

    def fit(self, X: pd.DataFrame, y: Any, sample_weight: Any = None) -> RobustBoostedTrees:
        """Fit ``n_estimators`` trees to ``X`` and the labels ``y`` (logistic loss)."""
        self._check_params()
        x = self._matrix(X)
        labels = np.asarray(y)
        if labels.shape != (len(x),):
            raise DataError(f"y must hold one label per row of X ({len(x)}), got shape {labels.shape}")
        self.classes_ = np.unique(labels)
        if len(self.classes_) != 2:
            raise DataError(f"y must hold two classes (not fraud, fraud), got {len(self.classes_)}: "
                            f"{self.classes_.tolist()[:5]}")
        target = (labels == self.classes_[1]).astype(np.float64)
        w = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if w.shape != (len(x),) or not np.isfinite(w).all() or (w < 0).any():
            raise DataError("sample_weight must hold one finite number >= 0 per row of X")
        schema: Schema = self.schema
        self.feature_names_in_ = np.asarray(schema.names, dtype=object)
        points, binned = self._bins(x)
        fraud = np.flatnonzero(target == 1)
        low, high, any_category = self._band(x[fraud], points)
        numeric = np.asarray([c.numeric for c in schema.columns])
        width = max(len(p) for p in points) + 1  # bins per column (the last: numbers past every point)
        usable = np.arange(width)[None, :] < np.asarray([len(p) for p in points])[:, None]  # (columns, bins)
        mean = float(np.clip(np.average(target, weights=w), 1e-12, 1 - 1e-12))
        self.base_score_ = math.log(mean / (1 - mean))
        depth, lam = int(self.max_depth), float(self.l2_regularization)
        internal = 2 ** depth - 1
        self.kind_ = np.zeros((self.n_estimators, internal), dtype=np.int8)
        self.feature_ = np.zeros((self.n_estimators, internal), dtype=np.int64)
        self.threshold_ = np.zeros((self.n_estimators, internal))
        self.value_ = np.zeros((self.n_estimators, 2 ** depth))
        is_fraud = np.zeros(len(x), dtype=bool)
        is_fraud[fraud] = True
        position = np.full(len(x), -1)
        position[fraud] = np.arange(len(fraud))
        offset = np.arange(len(schema.columns)) * width
        raw = np.full(len(x), self.base_score_)

        def hist(bins: np.ndarray, weights: np.ndarray) -> np.ndarray:
            """Sums of ``weights`` (per row) by column and bin: ``(columns, width)``."""
            flat = (bins + offset).ravel()
            return np.bincount(flat, np.repeat(weights, bins.shape[1]), minlength=len(offset) * width
                               ).reshape(len(offset), width)

        def score(g: np.ndarray, h: np.ndarray) -> np.ndarray:
            return g * g / (h + lam)

        for t in range(self.n_estimators):
            p = 1 / (1 + np.exp(-raw))
            grad, hess = w * (p - target), w * p * (1 - p)
            nodes = [np.arange(len(x))]
            for level in range(depth):
                children = []
                for i, rows in enumerate(nodes):
                    node = 2 ** level - 1 + i
                    split = self._best_split(rows, binned, grad, hess, is_fraud, position, low, high, any_category,
                                             numeric, usable, hist, score)
                    if split is None:
                        children += [rows, rows[:0]]
                        continue
                    k, b = split
                    left = binned[rows, k] <= b if numeric[k] else binned[rows, k] == b
                    self.kind_[t, node] = NUMERIC if numeric[k] else CATEGORY
                    self.feature_[t, node], self.threshold_[t, node] = k, points[k][b]
                    children += [rows[left], rows[~left]]
                nodes = children
            for leaf, rows in enumerate(nodes):
                value = -grad[rows].sum() / (hess[rows].sum() + lam) if len(rows) else 0.0
                self.value_[t, leaf] = self.learning_rate * value
                raw[rows] += self.value_[t, leaf]
        return self

    def _best_split(self, rows: np.ndarray, binned: np.ndarray, grad: np.ndarray, hess: np.ndarray,
                    is_fraud: np.ndarray, position: np.ndarray, low: np.ndarray, high: np.ndarray,
                    any_category: np.ndarray, numeric: np.ndarray, usable: np.ndarray, hist: Any, score: Any
                    ) -> tuple[int, int] | None:
        """The (column, bin) of the split of ``rows`` with the largest worst-case gain, or None."""
        if len(rows) < 2 * self.min_samples_leaf:
            return None
        fraud = rows[is_fraud[rows]]
        here = binned[rows]
        count = hist(here, np.ones(len(rows)))
        sums = []
        for v in (grad, hess):
            every = hist(here, v[rows])
            own = hist(binned[fraud], v[fraud])  # fraud rows where they are
            legit = every - own
            total_fraud = v[fraud].sum()
            at_low = np.cumsum(hist(low[position[fraud]], v[fraud]), axis=1)
            at_high = np.cumsum(hist(high[position[fraud]], v[fraud]), axis=1)
            # left of a numeric split at bin b: bins <= b; of a categorical one: bin == b
            legit_left = np.where(numeric[:, None], np.cumsum(legit, axis=1), legit)
            # fraud rows surely left: even their highest reach is left; surely right: even their lowest is right
            sure_left = np.where(numeric[:, None], at_high, np.where(any_category[:, None], 0.0, own))
            sure_right = np.where(numeric[:, None], total_fraud - at_low,
                                  np.where(any_category[:, None], 0.0, total_fraud - own))
            band = total_fraud - sure_left - sure_right
            sums.append((legit_left + sure_left, band, every.sum(axis=1)[:, None]))
        (g_left, g_band, g_all), (h_left, h_band, h_all) = sums
        n_left = np.where(numeric[:, None], np.cumsum(count, axis=1), count)
        ok = usable & (n_left >= self.min_samples_leaf) & (len(rows) - n_left >= self.min_samples_leaf)
        if not ok.any():
            return None
        parent, lam = score(g_all, h_all), float(self.l2_regularization)
        gains, chosen = [], []
        for side in (0.0, 1.0):  # the band on the right, then on the left
            gl, hl = g_left + side * g_band, h_left + side * h_band
            gains.append(score(gl, hl) + score(g_all - gl, h_all - hl) - parent)
            # would the attacker leave the band there: is its side's leaf the lower one?
            below = -gl / (hl + lam) <= -(g_all - gl) / (h_all - hl + lam)
            chosen.append(below if side else ~below)
        right, left = gains
        if self.band_side == "attacker":  # the band where the attacker would take it; nowhere stable: no gain
            gain = np.where(chosen[0] & chosen[1], np.minimum(right, left),
                            np.where(chosen[0], right, np.where(chosen[1], left, 0.0)))
        else:  # Chen et al.: the worse of the two
            gain = np.minimum(right, left)
        gain = np.where(ok, gain, -np.inf)
        k, b = np.unravel_index(int(np.argmax(gain)), gain.shape)
        return (int(k), int(b)) if gain[k, b] > 1e-12 else None

    # ----------------------------------------------------------------- prediction
    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        """The log-odds of fraud of every row of ``X``."""
        check_is_fitted(self, "value_")
        x = self._matrix(X)
        trees = np.arange(len(self.value_))[None, :]
        out = np.empty(len(x))
        step = max(1, CELLS // len(self.value_))
        for start in range(0, len(x), step):
            part = x[start:start + step]
            node = np.zeros((len(part), len(self.value_)), dtype=np.int64)
            reader = np.arange(len(part))[:, None]
            for _ in range(int(self.max_depth)):
                kind, threshold = self.kind_[trees, node], self.threshold_[trees, node]
                v = part[reader, self.feature_[trees, node]]
                right = np.where(kind == NUMERIC, ~(v <= threshold), (kind == CATEGORY) & (v != threshold))
                node = 2 * node + 1 + right
            out[start:start + step] = self.base_score_ + self.value_[trees, node - len(self.kind_[0])].sum(axis=1)
        return out

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """``(n, 2)`` probabilities in ``classes_`` order (column 1: fraud)."""
        p = 1 / (1 + np.exp(-self.decision_function(X)))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """The class of P(fraud) >= 0.5."""
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]

    def split_pairs(self) -> Iterator[tuple[str, float]]:
        """``(column, threshold)`` of every numeric split (what :func:`~domains.tabular.trees.split_thresholds`
        reads)."""
        check_is_fitted(self, "value_")
        names = self.schema.names
        for k, t in zip(self.feature_[self.kind_ == NUMERIC], self.threshold_[self.kind_ == NUMERIC], strict=True):
            yield names[int(k)], float(t)

    # ----------------------------------------------------------------- saving without a pickle
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The fitted model as JSON-ready parameters (the schema as its dict) and its tree arrays, what
        :meth:`from_state` reads back (the tabular persistence writes them as JSON and safetensors)."""
        check_is_fitted(self, "value_")
        params = {k: v for k, v in self.get_params(deep=False).items() if k != "schema"}
        described = {"params": params, "schema": self.schema.to_dict(), "base_score": float(self.base_score_),
                     "classes": self.classes_.tolist()}
        arrays = {"kind": self.kind_, "feature": self.feature_, "threshold": self.threshold_, "value": self.value_}
        return described, {k: np.ascontiguousarray(v) for k, v in arrays.items()}

    @classmethod
    def from_state(cls, described: dict[str, Any], arrays: dict[str, np.ndarray]) -> RobustBoostedTrees:
        """The fitted model :meth:`state` gave; parameters and arrays that do not fit each other are refused.

        Example:
            >>> from domains.tabular.synthetic import card_schema, generate
            >>> from domains.tabular.trees import typed_frame
            >>> schema, df = card_schema(), generate(500, seed=0)
            >>> X = typed_frame(schema, df)
            >>> model = RobustBoostedTrees(schema, n_estimators=3).fit(X, df["is_fraud"])
            >>> again = RobustBoostedTrees.from_state(*model.state())
            >>> bool((again.predict_proba(X) == model.predict_proba(X)).all())
            True
        """
        try:
            model = cls(Schema.from_dict(described["schema"]), **described["params"])
            model._check_params()
            model.classes_ = np.asarray(described["classes"])
            model.base_score_ = float(described["base_score"])
            model.kind_, model.feature_ = arrays["kind"].astype(np.int8), arrays["feature"].astype(np.int64)
            model.threshold_, model.value_ = arrays["threshold"].astype(np.float64), arrays["value"].astype(np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"not a saved RobustBoostedTrees ({type(exc).__name__}: {exc})") from None
        trees, internal = int(model.n_estimators), 2 ** int(model.max_depth) - 1
        shapes_fit = (model.kind_.shape == model.feature_.shape == model.threshold_.shape == (trees, internal)
                      and model.value_.shape == (trees, internal + 1))
        if not shapes_fit or len(model.classes_) != 2 or not math.isfinite(model.base_score_):
            raise ModelError("a saved RobustBoostedTrees whose arrays do not fit its parameters: the files were "
                             "changed or cut; save the model again")
        if ((model.feature_ < 0) | (model.feature_ >= len(model.schema.columns))).any() or not np.isin(
                model.kind_, (LEAF, NUMERIC, CATEGORY)).all():
            raise ModelError("a saved RobustBoostedTrees names a column or split kind its schema lacks: save it again")
        model.feature_names_in_ = np.asarray(model.schema.names, dtype=object)
        return model

