"""Robust splitting (domains.tabular.robust_trees): the closed-form split on one column, the vectorised split
finder against a direct reference, and the tree attack reading the learner's thresholds exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domains.tabular.robust_trees import RobustBoostedTrees
from domains.tabular.schema import Column, Schema
from domains.tabular.trees import split_thresholds, tree_attack, typed_frame
from robustkit.errors import ConfigError, DataError, ModelError
from tests.test_tabular_trees import exhaustive_minimum, small_data


def _stump(schema: Schema, budget: float | None = None, band_side: str = "worst-gain") -> RobustBoostedTrees:
    return RobustBoostedTrees(schema, budget=budget, n_estimators=1, max_depth=1, learning_rate=1.0,
                              min_samples_leaf=1, max_bins=255, band_side=band_side)


@pytest.mark.parametrize("band_side", ["worst-gain", "attacker"])
def test_the_robust_split_moves_its_threshold_past_the_band_so_fraud_within_reach_stays_caught(band_side: str) -> None:
    # one integer column the attacker moves 5 units either way; legitimate rows at 0..40 (few at 36..40),
    # fraud at 41..100 (many at 41..45): without a band the split is 40.5, and the fraud at 41..45 can
    # cross it; with the band the split is 35.5, the highest no fraud row can reach (41 - 5 = 36 > 35.5)
    schema = Schema([Column("a", "integer", mutable=True, lower=0, upper=100, cost=1.0)], budget=5.0)
    legit = np.r_[np.repeat(np.arange(0, 36), 10), np.repeat(np.arange(36, 41), 2)]
    fraud = np.r_[np.repeat(np.arange(41, 46), 40), np.repeat(np.arange(46, 101), 5)]
    df = pd.DataFrame({"a": np.r_[legit, fraud]})
    y = np.r_[np.zeros(len(legit)), np.ones(len(fraud))].astype(int)
    plain, robust = _stump(schema, budget=0.0).fit(df, y), _stump(schema, band_side=band_side).fit(df, y)
    assert split_thresholds(plain, schema)["a"].tolist() == [40.5]
    assert split_thresholds(robust, schema)["a"].tolist() == [35.5]
    frauds = df[y == 1]
    for model, evaded in ((plain, (frauds["a"] <= 45).to_numpy()), (robust, np.zeros(len(frauds), dtype=bool))):
        found = tree_attack(model, schema, frauds, threshold=0.5)
        assert found.table["detected_clean"].all()
        assert (found.table["fooled"].to_numpy() == evaded).all()


def _reference_gain(x: np.ndarray, y: np.ndarray, c: Column, budget: float, t: float, band_side: str) -> float:
    """The robust gain of ``x <= t`` for the first boosting round, row by row from the definition."""
    p = y.mean()
    g, h = p - y, np.full(len(y), p * (1 - p))
    reach = np.floor(budget / c.cost + 1e-9) if c.discrete else budget / c.cost
    hi = np.minimum(x + (reach if c.direction != "decrease" else 0), c.upper if c.upper is not None else np.inf)
    lo = np.maximum(x - (reach if c.direction != "increase" else 0), c.lower if c.lower is not None else -np.inf)
    band = (y == 1) & (lo <= t) & (hi > t)  # a fraud row the attacker can carry to either side
    sure_left = (x <= t) & ~band

    def score(mask: np.ndarray) -> float:
        return float(g[mask].sum() ** 2 / (h[mask].sum() + 1.0))

    def value(mask: np.ndarray) -> float:
        return float(-g[mask].sum() / (h[mask].sum() + 1.0))

    gains, stable = [], []
    for band_left in (False, True):
        left = sure_left | band if band_left else sure_left
        gains.append(score(left) + score(~left) - score(np.ones(len(x), dtype=bool)))
        lower_left = value(left) <= value(~left)
        stable.append(lower_left if band_left else not lower_left)
    if band_side == "worst-gain" or all(stable):
        return min(gains)
    return gains[stable.index(True)] if any(stable) else 0.0


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_the_split_finder_takes_the_threshold_of_largest_worst_case_gain(data: Any) -> None:
    band_side = data.draw(st.sampled_from(["worst-gain", "attacker"]))
    kind = data.draw(st.sampled_from(["integer", "continuous"]))
    direction = data.draw(st.sampled_from(["both", "increase", "decrease"]))
    c = Column("a", kind, mutable=True, lower=0, upper=20, direction=direction, cost=data.draw(st.floats(0.2, 5)))
    budget = data.draw(st.floats(0, 4))
    n = data.draw(st.integers(4, 30))
    values = st.integers(0, 20) if kind == "integer" else st.floats(0, 20).map(lambda v: round(v, 1))
    x = np.asarray(data.draw(st.lists(values, min_size=n, max_size=n)), dtype=float)
    y = np.r_[0, 1, data.draw(st.lists(st.integers(0, 1), min_size=n - 2, max_size=n - 2))]
    schema = Schema([c], budget=budget)
    model = _stump(schema, band_side=band_side).fit(pd.DataFrame({"a": x}), y)
    candidates = (np.unique(x)[:-1] + np.unique(x)[1:]) / 2
    gains = [_reference_gain(x, y, c, budget, t, band_side) for t in candidates]
    if model.kind_[0, 0] == 0:  # no split: none gains
        assert not gains or max(gains) <= 1e-9
    else:
        chosen = _reference_gain(x, y, c, budget, model.threshold_[0, 0], band_side)
        assert chosen == pytest.approx(max(gains), abs=1e-9)


def test_a_split_isolating_legitimate_rows_every_fraud_row_reaches_gains_nothing_where_the_attacker_goes() -> None:
    # fraud at 0..4, legitimate rows at 0..9, and the attacker reaches all of it: Chen et al.'s worst-gain
    # score still splits off the legitimate rows at 5..9 (whichever side the band is put, one side is
    # purely legitimate), and the attack moves every fraud row there; put where the attacker takes it
    # (the lower leaf), the band leaves no side purely legitimate, so there is no split to evade
    schema = Schema([Column("a", "integer", mutable=True, lower=0, upper=9, cost=1.0)], budget=10.0)
    df = pd.DataFrame({"a": np.r_[np.repeat(np.arange(10), 10), np.repeat(np.arange(5), 10)]})
    y = np.r_[np.zeros(100), np.ones(50)].astype(int)
    chen, attacker = (_stump(schema, band_side=side).fit(df, y) for side in ("worst-gain", "attacker"))
    assert chen.kind_[0, 0] != 0 and attacker.kind_[0, 0] == 0
    frauds = df[y == 1]
    threshold = float(chen.predict_proba(frauds)[:, 1].min())
    assert tree_attack(chen, schema, frauds, threshold).table["fooled"].all()


@pytest.mark.parametrize(("budget", "band_side"), [(0.0, "worst-gain"), (None, "worst-gain"), (0.5, "attacker")])
def test_the_tree_attack_reads_the_robust_trees_thresholds_exactly(budget: float | None, band_side: str) -> None:
    schema, df, y = small_data(0)
    model = RobustBoostedTrees(schema, budget=budget, n_estimators=4, max_depth=2, band_side=band_side)
    model.fit(typed_frame(schema, df), y)
    thresholds = split_thresholds(model, schema)
    assert thresholds is not None and len(thresholds["a"]) and set(thresholds) == {"a", "n", "age"}
    rows = df.iloc[:10]
    found = tree_attack(model, schema, rows, threshold=0.0)  # thresholds read by split_thresholds
    assert schema.validate(found.rows, rows).all()
    assert found.table["p_fraud_adversarial"].to_numpy() == pytest.approx(
        exhaustive_minimum(model, schema, rows, thresholds), abs=1e-12)


def test_rows_read_as_strings_or_as_typed_categoricals_score_the_same() -> None:
    schema, df, y = small_data(1)
    model = RobustBoostedTrees(schema, n_estimators=10).fit(df, y)
    assert np.array_equal(model.predict_proba(df), model.predict_proba(typed_frame(schema, df)))
    assert set(model.predict(df)) <= {0, 1}


def test_bad_parameters_and_data_are_refused_before_fitting() -> None:
    schema, df, y = small_data(0)
    with pytest.raises(ConfigError, match="max_depth"):
        RobustBoostedTrees(schema, max_depth=0).fit(df, y)
    with pytest.raises(ConfigError, match="band_side"):
        RobustBoostedTrees(schema, band_side="left").fit(df, y)
    with pytest.raises(ConfigError, match="budget"):
        RobustBoostedTrees(schema, budget=-1.0).fit(df, y)
    with pytest.raises(DataError, match="'shop'"):
        RobustBoostedTrees(schema).fit(df.drop(columns="shop"), y)
    with pytest.raises(DataError, match="two classes"):
        RobustBoostedTrees(schema).fit(df, np.zeros(len(df)))


def test_as_the_classifier_s_estimator_the_attacker_banded_trees_keep_more_recall_under_the_tree_attack(
        tmp_path: Path) -> None:
    from domains.tabular.estimator import RobustTabularClassifier
    from domains.tabular.synthetic import card_schema, generate

    schema, df = card_schema(), generate(1500, seed=0, fraud_rate=0.1)
    train, test = df.iloc[:1000], df.iloc[1000:]
    out = {}
    for budget in (0.0, None):
        trees = RobustBoostedTrees(schema, budget=budget, band_side="attacker", n_estimators=30)
        clf = RobustTabularClassifier(schema, estimator=trees, method="standard", target_fpr=0.05)
        out[budget] = clf.fit(train.drop(columns="is_fraud"), train["is_fraud"]).evaluate(
            test.drop(columns="is_fraud"), test["is_fraud"])
    # saved without a pickle (arrays in safetensors, the rest in JSON) and read back to the same scores
    folder = clf.save(tmp_path / "robust")
    assert (folder / "estimator.safetensors").is_file() and not list(folder.glob("*.skops"))
    again = RobustTabularClassifier.load(folder)
    rows = test.drop(columns="is_fraud")
    assert np.array_equal(again.predict_proba(rows), clf.predict_proba(rows))
    described, arrays = clf.estimator_.state()
    with pytest.raises(ModelError, match="do not fit"):
        RobustBoostedTrees.from_state(described, {**arrays, "value": arrays["value"][:, :1]})
    assert out[0.0]["recall_attacked"] < out[0.0]["recall_clean"] - 0.1  # the control is evaded
    assert out[None]["recall_attacked"] > out[0.0]["recall_attacked"] + 0.05
    assert out[None]["recall_attacked"] >= out[None]["recall_clean"] - 0.05  # and these trees hardly
