"""Tree ensembles under the schema: thresholds read and probed, the beam search against exhaustive enumeration,
validity of every adversarial row, and hardening by adversarial data augmentation."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.ensemble import HistGradientBoostingClassifier

from domains.tabular.schema import Column, Schema
from domains.tabular.synthetic import card_schema, generate
from domains.tabular.trees import (
    fraud_scores,
    probe_thresholds,
    split_thresholds,
    tree_attack,
    typed_frame,
)
from tests.strategies import schema_and_rows


class Stumps:
    """A random additive ensemble of depth-1 trees over a schema (``x <= t`` or ``category == v``)."""

    def __init__(self, schema: Schema, draw: Any) -> None:
        self.schema = schema
        self.trees = []
        for _ in range(draw(st.integers(1, 6))):
            c = draw(st.sampled_from(schema.columns))
            if c.numeric:
                lo = -60.0 if c.lower is None else c.lower
                hi = 160.0 if c.upper is None else c.upper
                split: Any = draw(st.floats(lo - 1, hi + 1))
            else:
                split = draw(st.sampled_from(c.categories or []))
            self.trees.append((c.name, split, draw(st.floats(-3, 3)), draw(st.floats(-3, 3))))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        z = np.zeros(len(X))
        for name, split, left, right in self.trees:
            if self.schema[name].numeric:
                go_left = X[name].to_numpy(dtype=float) <= split
            else:
                go_left = X[name].astype(str).to_numpy() == split
            z += np.where(go_left, left, right)
        p = 1 / (1 + np.exp(-z))
        return np.stack([1 - p, p], axis=1)


@st.composite
def attacked(draw: Any) -> tuple[Schema, pd.DataFrame, Stumps, float]:
    schema, rows = draw(schema_and_rows(relation=True))
    return schema, rows, Stumps(schema, draw), draw(st.floats(0.05, 0.95))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attacked(), st.booleans())
def test_every_row_the_tree_attack_returns_passes_the_schema(case: tuple, probed: bool) -> None:
    schema, rows, model, threshold = case
    thresholds = None if probed else {n: np.asarray([t for m, t, _, _ in model.trees if m == n], dtype=float)
                                      for n in schema.names if schema[n].numeric}
    found = tree_attack(model, schema, rows, threshold, thresholds=thresholds, beam_width=3)
    assert schema.validate(found.rows, rows).all()
    assert found.table["valid"].all() and not found.table["repair_failed"].any()
    p = fraud_scores(model, schema, found.rows)
    fooled = found.table["fooled"].to_numpy()
    assert (p[fooled] < threshold).all()  # an evasion claimed is one the model confirms
    assert np.allclose(p, found.table["p_fraud_adversarial"])
    assert (found.table.loc[~found.table["detected_clean"], "fooled"] == False).all()  # noqa: E712


def small_data(seed: int) -> tuple[Schema, pd.DataFrame, pd.Series]:
    """A schema of four columns (every kind of rule) and 400 rows labelled by a noisy rule over them."""
    rng = np.random.default_rng(seed)
    schema = Schema([Column("a", mutable=True, lower=0, upper=10, cost=0.4),
                     Column("n", "integer", mutable=True, lower=0, upper=20, direction="increase", cost=0.3),
                     Column("shop", "categorical", mutable=True, categories=["x", "y", "z"], cost=0.9),
                     Column("age", "integer", lower=0, upper=5)], budget=2.0)
    n = 400
    df = pd.DataFrame({"a": rng.uniform(0, 10, n).round(2), "n": rng.integers(0, 21, n),
                       "shop": rng.choice(["x", "y", "z"], n), "age": rng.integers(0, 6, n)})
    logit = 1.5 * ((df["a"] - 5).abs() - 2.5) - 0.2 * (df["n"] - 10) + (df["shop"] == "x") * 2.0 + rng.normal(0, 1, n)
    return schema, df, (logit > 0).astype(int)


def _small_problem(seed: int) -> tuple[Schema, pd.DataFrame, HistGradientBoostingClassifier]:
    schema, df, y = small_data(seed)
    model = HistGradientBoostingClassifier(max_iter=6, max_depth=2, random_state=0).fit(typed_frame(schema, df), y)
    return schema, df, model


def exhaustive_minimum(model: Any, schema: Schema, rows: pd.DataFrame, thresholds: dict[str, np.ndarray]
                       ) -> np.ndarray:
    """Per row, the lowest P(fraud) over every valid combination of each mutable column's values: the
    original, just either side of every threshold, every category."""
    grids = []
    for c in schema.columns:
        if not c.mutable:
            grids.append([None])
        elif c.numeric:
            t = thresholds[c.name]
            side = (np.concatenate([np.floor(t), np.floor(t) + 1]) if c.discrete
                    else np.concatenate([t - 1e-6 * np.maximum(1, abs(t)), t + 1e-6 * np.maximum(1, abs(t))]))
            grids.append([None, *np.clip(side, c.lower, c.upper).tolist()])
        else:
            grids.append([None, *(c.categories or [])])
    combos = list(itertools.product(*grids))
    best = np.empty(len(rows))
    for i in range(len(rows)):
        orig = rows.iloc[[i]]
        cand = orig.loc[orig.index.repeat(len(combos))].reset_index(drop=True)
        for k, c in enumerate(schema.columns):
            chosen = np.asarray([v[k] for v in combos], dtype=object)
            keep = np.asarray([v is not None for v in chosen])
            col = cand[c.name].to_numpy(dtype=object, copy=True)
            col[keep] = chosen[keep]
            cand[c.name] = col.astype(orig[c.name].dtype) if c.numeric else col
        ok = schema.validate(cand, orig.loc[orig.index.repeat(len(combos))].reset_index(drop=True)).to_numpy()
        best[i] = fraud_scores(model, schema, cand[ok]).min()
    return best


@pytest.mark.parametrize("seed", [0, 1])
def test_on_a_small_ensemble_the_beam_search_finds_the_exhaustive_optimum_of_the_threshold_grid(seed: int) -> None:
    schema, df, model = _small_problem(seed)
    rows = df.iloc[:12]
    thresholds = split_thresholds(model, schema)
    assert thresholds is not None
    found = tree_attack(model, schema, rows, threshold=0.0, thresholds=thresholds, beam_width=8)
    best = exhaustive_minimum(model, schema, rows, thresholds)
    assert found.table["p_fraud_adversarial"].to_numpy() == pytest.approx(best, abs=1e-12)


def test_thresholds_read_from_the_trees_are_those_probing_finds() -> None:
    schema, df, model = _small_problem(0)
    read = split_thresholds(model, schema)
    probed = probe_thresholds(model, schema, df.iloc[:50], grid=200)
    assert read is not None and len(read["a"]) and len(read["n"])
    for name in ("a", "n"):
        for t in probed[name]:  # every cut probing sees is a split of the trees (integers: between two values)
            near = np.abs(read[name] - t).min()
            assert near < (1e-6 if name == "a" else 0.51)


def test_the_tree_attack_evades_gradient_boosting_on_card_data_with_valid_rows() -> None:
    schema = card_schema()
    df = generate(3000, seed=3)
    train, test = df.iloc[:2000], df.iloc[2000:]
    model = HistGradientBoostingClassifier(max_iter=40, random_state=0).fit(typed_frame(schema, train),
                                                                            train["is_fraud"])
    frauds = test[test["is_fraud"] == 1]
    found = tree_attack(model, schema, frauds, threshold=0.5)
    summary = found.summary()
    assert summary["recall_clean"] > 0.5
    assert summary["recall_attacked_strongest"] < summary["recall_clean"] - 0.1
    assert schema.validate(found.rows, frauds).all()
    assert list(found.rows.columns) == schema.names and found.rows["hour"].dtype == frauds["hour"].dtype



def test_the_estimator_takes_any_classifier_and_attacks_it_with_the_tree_attack() -> None:
    from domains.tabular.estimator import RobustTabularClassifier

    df = generate(1200, seed=0, fraud_rate=0.1)
    X, y = df.drop(columns="is_fraud"), df["is_fraud"]
    clf = RobustTabularClassifier(card_schema(), estimator=HistGradientBoostingClassifier(max_iter=15),
                                  rounds=1, target_fpr=0.05).fit(X, y)
    assert len(clf.history_) == 2 and 0 < clf.threshold_ < 1
    p = clf.predict_proba(X.head(50))
    assert np.allclose(p[:, 1], clf.estimator_.predict_proba(typed_frame(card_schema(), X.head(50)))[:, 1])
    frauds = X[y == 1]
    rows, info = clf.attack(frauds)
    assert card_schema().validate(rows, frauds).all()
    assert (clf.predict_proba(rows)[:, 1] >= clf.threshold_).tolist() == info["flagged_attacked"].tolist()
    out = clf.evaluate(X, y)
    assert out["recall_attacked"] == pytest.approx((info["flagged_clean"] & info["flagged_attacked"]).mean())


def _library_model(name: str, schema: Schema, df: pd.DataFrame) -> Any:
    if name == "xgboost":
        xgb = pytest.importorskip("xgboost")
        model = xgb.XGBClassifier(n_estimators=6, max_depth=2, enable_categorical=True, tree_method="hist")
    else:
        lgb = pytest.importorskip("lightgbm")
        model = lgb.LGBMClassifier(n_estimators=6, num_leaves=4, min_child_samples=5, verbose=-1)
    y = ((df["a"] - 5).abs() > 2.5).astype(int) ^ (df["n"] > 12).astype(int)
    return model.fit(typed_frame(schema, df), y)


@pytest.mark.parametrize("library", ["xgboost", "lightgbm"])
def test_thresholds_read_from_xgboost_and_lightgbm_dumps_are_those_probing_finds(library: str) -> None:
    schema, df, _ = _small_problem(0)
    model = _library_model(library, schema, df)
    read = split_thresholds(model, schema)
    probed = probe_thresholds(model, schema, df.iloc[:50], grid=200)
    assert read is not None and len(read["a"])
    for name in ("a", "n"):
        for t in probed[name]:
            assert np.abs(read[name] - t).min() < (1e-4 if name == "a" else 0.51)
    found = tree_attack(model, schema, df.iloc[:30], threshold=0.5)
    assert schema.validate(found.rows, df.iloc[:30]).all()
