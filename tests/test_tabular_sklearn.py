"""The scikit-learn side of the tabular domain: ColumnTransformer -> torch, and the robust estimator."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    KBinsDiscretizer,
    MaxAbsScaler,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    RobustScaler,
    StandardScaler,
)

import robustkit as rk
from domains.tabular.estimator import RobustTabularClassifier
from domains.tabular.schema import Column, Schema
from domains.tabular.sklearn_bridge import bridge
from domains.tabular.space import SchemaSpace, decode, encode
from domains.tabular.synthetic import card_schema, generate
from robustkit import ConfigError, DataError

# ----------------------------------------------------------------- the bridge

SCHEMA = Schema([
    Column("amount", "continuous", mutable=True, lower=-500, upper=5000, cost=0.01),
    Column("shop", "categorical", mutable=True, categories=["grocery", "fuel", "online", "travel"], cost=1.0),
    Column("hour", "integer", mutable=True, lower=0, upper=23, cost=0.1),
    Column("present", "binary", mutable=True, cost=1.0),
    Column("tier", "categorical", categories=["1", "2", "3"]),  # integer values, declared categorical
    Column("rate", "continuous", lower=0, upper=1),
])
NUMERIC = ["amount", "hour", "present", "rate"]


def frame(n: int, seed: int) -> pd.DataFrame:
    """Random rows; continuous values on a 1/64 grid, so float32 encoding is exact."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "amount": np.round(rng.uniform(-500, 5000, n) * 64) / 64,
        "shop": rng.choice(SCHEMA["shop"].categories, n),
        "hour": rng.integers(0, 24, n),
        "present": rng.integers(0, 2, n),
        "tier": rng.integers(1, 4, n),
        "rate": np.round(rng.uniform(0, 1, n) * 64) / 64,
    })


def _tolerant_cts() -> list[ColumnTransformer]:
    """ColumnTransformers whose encoders accept any schema category (fit on any frame)."""
    return [
        ColumnTransformer([("num", StandardScaler(), NUMERIC),
                           ("cat", OneHotEncoder(handle_unknown="ignore"), ["shop", "tier"])]),
        ColumnTransformer([("half", StandardScaler(with_mean=False), ["amount", "hour"]),
                           ("centre", StandardScaler(with_std=False), ["rate"]),
                           ("first", OneHotEncoder(drop="first", handle_unknown="ignore", sparse_output=False),
                            ["shop"]),
                           ("ord", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
                            ["tier", "shop"])],
                          remainder="passthrough", transformer_weights={"half": 2.0, "ord": 0.5}),
        ColumnTransformer([("rob", RobustScaler(), [0, 2]),
                           ("mm", MinMaxScaler(feature_range=(-1, 1)), ["present", "rate"]),
                           ("rare", OneHotEncoder(min_frequency=3, handle_unknown="infrequent_if_exist"), ["shop"]),
                           ("dropped", "drop", ["tier"])]),
        ColumnTransformer([("abs", MaxAbsScaler(), make_column_selector(dtype_include="float")),
                           ("order", OneHotEncoder(categories=[["travel", "online", "fuel", "grocery"]]), ["shop"]),
                           ("keep", "passthrough", [False, False, True, True, False, False]),
                           ("tier", OrdinalEncoder(categories=[[1, 2, 3, 4]]), ["tier"])]),
    ]


def _dense(out) -> np.ndarray:
    return np.asarray(out.toarray() if hasattr(out, "toarray") else out, dtype=np.float64)


@pytest.mark.parametrize("k", range(4))
def test_bridged_module_equals_transform(k):
    ct = _tolerant_cts()[k].fit(frame(300, seed=k))
    module = bridge(ct, SCHEMA)
    df = frame(200, seed=10 + k)
    out = module(encode(SCHEMA, df).double()).detach().numpy()
    expected = _dense(ct.transform(df))
    assert out.shape == expected.shape and module.feature_names_out == list(ct.get_feature_names_out())
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


@st.composite
def frames(draw) -> pd.DataFrame:
    n = draw(st.integers(1, 12))
    col = lambda elems: draw(st.lists(elems, min_size=n, max_size=n))  # noqa: E731
    grid = lambda lo, hi: st.integers(lo * 64, hi * 64).map(lambda v: v / 64)  # noqa: E731
    return pd.DataFrame({
        "amount": col(grid(-500, 5000)), "shop": col(st.sampled_from(SCHEMA["shop"].categories)),
        "hour": col(st.integers(0, 23)), "present": col(st.integers(0, 1)), "tier": col(st.integers(1, 3)),
        "rate": col(grid(0, 1)),
    })


@given(frames(), frames(), st.integers(0, 3), st.integers(0, 2**16))
def test_bridge_matches_transform_on_random_frames_and_on_decoded_attack_points(fit_on, df, k, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # constant columns, unknown categories: intended
        ct = _tolerant_cts()[k].fit(fit_on)
        module = bridge(ct, SCHEMA)
        x = encode(SCHEMA, df)
        np.testing.assert_allclose(module(x.double()).numpy(), _dense(ct.transform(df)), rtol=0, atol=1e-6)
        # any point an attack reaches is scored as the row it decodes to (integers rounded, argmax categories)
        g = torch.Generator().manual_seed(seed)
        x_adv = SchemaSpace(SCHEMA, budget=5.0).project(x + 3 * torch.randn(x.shape, generator=g), x)
        rows = decode(SCHEMA, x_adv).astype({"tier": int})  # decode gives categories as the schema's strings
        np.testing.assert_allclose(module(x_adv.double()).numpy(), _dense(ct.transform(rows)), rtol=0, atol=1e-4)


def test_bridged_module_has_gradients_for_every_column():
    ct = _tolerant_cts()[0].fit(frame(100, seed=0))
    x = encode(SCHEMA, frame(5, seed=1)).requires_grad_(True)
    out = bridge(ct, SCHEMA)(x)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert x.grad is not None and bool((x.grad.abs().sum(dim=0) > 0).all())


def test_bridge_rejects_what_it_cannot_honour():
    df = frame(50, seed=0)
    cases = {
        "poly": ColumnTransformer([("poly", KBinsDiscretizer(n_bins=3), ["amount"])]),
        "ohe_num": ColumnTransformer([("ohe_num", OneHotEncoder(), ["hour"])]),
        "scale_cat": ColumnTransformer([("scale_cat", StandardScaler(), ["amount", "tier"])]),
        "strict": ColumnTransformer([("strict", OneHotEncoder(), ["shop"])]),  # fitted without 'travel'
        "clip": ColumnTransformer([("clip", MinMaxScaler(clip=True), ["amount"])]),
        "raw": ColumnTransformer([("raw", "passthrough", ["shop"])]),
        "nan": ColumnTransformer([("nan", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan),
                                   ["shop"])]),
    }
    for name, ct in cases.items():
        with pytest.raises(ConfigError, match=name):
            bridge(ct.fit(df[df["shop"] != "travel"]), SCHEMA)
    extra = ColumnTransformer([("x", StandardScaler(), ["amount", "other"])]).fit(df.assign(other=1.0))
    with pytest.raises(ConfigError, match="'other'"):
        bridge(extra, SCHEMA)
    with pytest.raises(ConfigError, match="not fitted"):
        bridge(ColumnTransformer([("s", StandardScaler(), ["amount"])]), SCHEMA)
    with pytest.raises(ConfigError, match="DataFrame"):
        bridge(ColumnTransformer([("s", StandardScaler(), [0])]).fit(df[["amount"]].to_numpy()), SCHEMA)


# ----------------------------------------------------------------- the estimator


def xy(n: int, seed: int, fraud_rate: float = 0.15) -> tuple[pd.DataFrame, pd.Series]:
    df = generate(n, seed=seed, fraud_rate=fraud_rate)
    return df.drop(columns="is_fraud"), df["is_fraud"]


def small(**kw) -> RobustTabularClassifier:
    return RobustTabularClassifier(card_schema(), **{"method": "standard", "epochs": 2, "hidden": (16,), **kw})


@pytest.fixture(scope="module")
def fitted() -> RobustTabularClassifier:
    X, y = xy(600, seed=0)
    return small().fit(X, y)


def test_clone_get_params_set_params_round_trip():
    ct = ColumnTransformer([("num", StandardScaler(), ["amount"])])
    est = small(preprocessor=ct, budget=2.0)
    params = est.get_params(deep=False)
    assert params["budget"] == 2.0 and params["preprocessor"] is ct and params["hidden"] == (16,)
    twin = clone(est)
    assert twin is not est and twin.get_params(deep=False).keys() == params.keys()
    assert twin.schema.to_dict() == est.schema.to_dict() and twin.preprocessor is not ct
    assert twin.set_params(epochs=7, preprocessor__num__with_mean=False) is twin
    assert twin.epochs == 7 and twin.preprocessor.transformers[0][1].with_mean is False
    assert est.epochs == 2 and ct.transformers[0][1].with_mean is True
    with pytest.raises(NotFittedError):
        est.predict(xy(20, seed=0)[0])


def test_predict_proba_shapes_threshold_and_reproducibility(fitted):
    X, y = xy(400, seed=5)
    proba = fitted.predict_proba(X)
    assert proba.shape == (400, 2) and np.allclose(proba.sum(axis=1), 1) and ((proba >= 0) & (proba <= 1)).all()
    pred = fitted.predict(X)
    assert pred.shape == (400,) and fitted.classes_.tolist() == [0, 1] and 0 < fitted.threshold_ < 1
    assert (pred == (proba[:, 1] >= fitted.threshold_)).all()
    assert ((fitted.decision_function(X) > 0) == (proba[:, 1] > fitted.threshold_)).mean() > 0.99
    assert fitted.n_features_in_ == 9 and fitted.feature_names_in_.tolist() == list(X.columns)
    assert ((pred == 1) & (y.to_numpy() == 0)).sum() / (y == 0).sum() < 0.05  # near the 1% target FPR
    again = small().fit(*xy(600, seed=0))
    np.testing.assert_array_equal(again.predict_proba(X), proba)
    looser = small(target_fpr=0.2).fit(*xy(600, seed=0))
    assert looser.threshold_ < fitted.threshold_ and looser.predict(X).sum() > pred.sum()
    labels = small().fit(xy(600, seed=0)[0], xy(600, seed=0)[1].astype(bool))
    assert labels.classes_.tolist() == [False, True] and labels.predict(X).dtype == bool


def drop_note(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns="note")


def test_pipeline_with_a_bridged_preprocessor():
    X, y = xy(600, seed=1)
    ct = ColumnTransformer([("num", StandardScaler(), make_column_selector(dtype_include="number")),
                            ("cat", OneHotEncoder(handle_unknown="ignore"), ["merchant_category", "country"])])
    pipe = make_pipeline(FunctionTransformer(drop_note), small(preprocessor=ct))
    pipe.fit(X.assign(note="x"), y)
    est = pipe[-1]
    assert not hasattr(ct, "transformers_"), "the given preprocessor is cloned, not fitted in place"
    assert pipe.predict_proba(X.assign(note="y")).shape == (600, 2) and pipe.predict(X.assign(note="")).shape == (600,)
    bridged = est.model_[0](encode(card_schema(), X)).detach().numpy()
    np.testing.assert_allclose(bridged, _dense(est.preprocessor_.transform(X)), atol=1e-4)
    prefit = clone(ct).fit(X.head(100))  # a fitted preprocessor is used as given, not refitted
    again = pickle.loads(pickle.dumps(small(preprocessor=prefit).fit(X, y)))
    assert again.preprocessor_ is not prefit
    np.testing.assert_allclose(again.preprocessor_.named_transformers_["num"].mean_,
                               prefit.named_transformers_["num"].mean_)
    assert again.predict(X).shape == (600,)


def test_grid_search_smoke():
    X, y = xy(400, seed=2, fraud_rate=0.2)
    search = GridSearchCV(small(epochs=1), {"hidden": [(8,), (16,)]}, cv=2, scoring="roc_auc").fit(X, y)
    assert search.best_params_["hidden"] in [(8,), (16,)] and search.best_estimator_.predict(X).shape == (400,)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


def test_hardened_estimator_keeps_more_fraud_recall_under_attack():
    X, y = xy(1500, seed=0)
    Xt, yt = xy(1000, seed=100)
    results = {}
    for name, method in {"standard": "standard", "pgd": rk.methods.PGDTraining(steps=5)}.items():
        est = RobustTabularClassifier(card_schema(), method=method, epochs=4, random_state=0).fit(X, y)
        results[name] = est.evaluate(Xt, yt)
    std, hard = results["standard"], results["pgd"]
    assert std["recall_clean"] > 0.8 and hard["recall_clean"] > 0.8
    assert hard["recall_attacked"] > std["recall_attacked"] + 0.15, results
    quick = est.evaluate(Xt, yt, attack="pgd", steps=20)  # PGD alone, the attack it trained against
    assert quick["recall_clean"] == hard["recall_clean"] and quick["recall_attacked"] >= hard["recall_attacked"]
    with pytest.raises(ConfigError, match="strongest"):
        est.evaluate(Xt, yt, attack="apgd")
    fraud = Xt[yt.to_numpy() == 1]
    rows, info = est.attack(fraud, steps=10)
    schema = card_schema()
    assert schema.validate(rows, fraud).all() and (info["cost"] <= schema.budget + 1e-6).all()
    assert list(rows.columns) == schema.names and not info["repair_failed"].any()


def test_the_schemas_drop_columns_are_accepted_and_left_out():
    base = card_schema()
    schema = Schema(base.columns, base.budget, base.target, base.relations, drop=["customer_id"])
    X, y = xy(300, seed=5)
    with_ids = X.assign(customer_id=np.arange(len(X)))
    clf = small(epochs=1).set_params(schema=schema).fit(with_ids, y)
    reference = small(epochs=1).fit(X, y)  # the same training, as the ids are left out
    np.testing.assert_array_equal(clf.predict_proba(with_ids), reference.predict_proba(X))
    np.testing.assert_array_equal(clf.predict_proba(with_ids.assign(customer_id=-1)), clf.predict_proba(X))
    rows, _ = clf.attack(with_ids[y.to_numpy() == 1].head(5), steps=3)
    assert list(rows.columns) == schema.names
    with pytest.raises(DataError, match="'account' that the schema does not declare"):
        clf.predict(with_ids.assign(account=1))


def test_errors_name_the_problem_before_training():
    X, y = xy(200, seed=3, fraud_rate=0.2)
    data_cases = [
        (X.to_numpy(), y, "DataFrame"),
        (X.drop(columns="hour"), y, "hour"),
        (X.assign(extra=1), y, "extra"),
        (X.assign(is_fraud=y), y, "is_fraud"),
        (X.assign(country="mars"), y, "country"),
        (X, y.to_numpy() * np.arange(200) % 3, "binary"),
        (X, np.zeros(200), "binary"),
        (X, y[:50], "50"),
        (X, y.where(y.index > 0), "missing"),
        (X, (np.arange(200) == 0).astype(int), "at least 2"),
    ]
    for frame_, labels, match in data_cases:
        est = small()
        with pytest.raises(DataError, match=match):
            est.fit(frame_, labels)
        assert not hasattr(est, "model_")
    config_cases = [
        ({"method": "sgd"}, "method"),
        ({"epochs": 0}, "epochs"),
        ({"target_fpr": 1.5}, "target_fpr"),
        ({"hidden": "64"}, "hidden"),
        ({"lr": -1}, "lr"),
        ({"budget": -2.0}, "budget"),
        ({"class_weight": "auto"}, "class_weight"),
        ({"preprocessor": StandardScaler()}, "preprocessor"),
        ({"schema": "schema.yaml"}, "schema"),
        ({"preprocessor": ColumnTransformer([("bins", KBinsDiscretizer(n_bins=3), ["amount"])])}, "bins"),
    ]
    for params, match in config_cases:
        est = small().set_params(**params)
        with pytest.raises(ConfigError, match=match):
            est.fit(X, y)
        assert not hasattr(est, "model_")


def test_string_labels_attack_the_named_positive_class_never_the_one_sorting_last():
    """'legit' sorts after 'fraud': the old rule took it as the positive class and attacked legitimate rows."""
    X, y = xy(600, seed=0)
    named = y.map({0: "legit", 1: "fraud"})
    clf = small().fit(X, named)
    assert clf.classes_.tolist() == ["fraud", "legit"] and clf.pos_label_ == "fraud"
    Xt, yt = xy(400, seed=5)
    proba, numeric = clf.predict_proba(Xt), small().fit(X, y).predict_proba(Xt)
    np.testing.assert_allclose(proba[:, 0], numeric[:, 1])  # the fraud column, wherever it sorts
    assert ((clf.predict(Xt) == "fraud") == (proba[:, 0] >= clf.threshold_)).all()
    report = clf.evaluate(Xt, yt.map({0: "legit", 1: "fraud"}), attack="pgd", steps=3)
    assert report["n_fraud"] == int(yt.sum())  # the fraud rows were attacked, not the legitimate ones
    other = y.map({0: "ok", 1: "chargeback"})
    with pytest.raises(DataError, match=r"'chargeback' and 'ok'.*pos_label"):
        small().fit(X, other)
    assert small(pos_label="chargeback").fit(X, other).pos_label_ == "chargeback"
    with pytest.raises(DataError, match=r"pos_label='fraud' is not one of"):
        small(pos_label="fraud").fit(X, other)
