"""scikit-learn conformance of RobustTabularClassifier and RobustSpamClassifier.

Both estimators declare their real input through ``__sklearn_tags__``: a DataFrame in a schema's
columns, or texts. scikit-learn's data checks feed bare 2-D arrays of numbers, so under those tags
it yields only its cloning check; every other check it has is either run here directly (the API
checks that need no data) or listed in ``COVERED`` with the test below that checks the same
behaviour on the estimator's real input.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from sklearn.base import BaseEstimator, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import FixedThresholdClassifier
from sklearn.utils import estimator_checks as ec
from sklearn.utils.estimator_checks import parametrize_with_checks

from domains.tabular.estimator import RobustTabularClassifier
from domains.tabular.synthetic import card_schema, generate
from domains.text import RobustSpamClassifier
from domains.text.data import demo_corpus
from robustkit import ConfigError, DataError


def tabular() -> RobustTabularClassifier:
    return RobustTabularClassifier(card_schema(), method="standard", epochs=1, hidden=(4,), batch_size=64)


def text() -> RobustSpamClassifier:
    return RobustSpamClassifier(method="standard", epochs=1, dim=8, channels=8, batch_size=64)


FRAME = generate(160, seed=0, fraud_rate=0.25)
TAB_X, TAB_Y = FRAME.drop(columns="is_fraud"), FRAME["is_fraud"].to_numpy()
TEXTS, TEXT_Y = demo_corpus(120, seed=1)
TEXT_Y = np.asarray(TEXT_Y)
DATA: dict[str, tuple[Any, np.ndarray]] = {"tabular": (TAB_X, TAB_Y), "text": (TEXTS, TEXT_Y)}
MAKE = {"tabular": tabular, "text": text}
KINDS = sorted(MAKE)

#: scikit-learn's checks that need no data: run as they are on both estimators
RUN = ("check_estimator_cloneable", "check_estimator_tags_renamed", "check_valid_tag_types", "check_estimator_repr",
       "check_no_attributes_set_in_init", "check_do_not_raise_errors_in_init_or_set_params", "check_mixin_order",
       "check_get_params_invariance", "check_set_params")

#: scikit-learn's checks that feed 2-D arrays of numbers, which neither estimator takes (a DataFrame under a
#: schema; texts): the test here that checks the same behaviour on real input, or why it does not apply
COVERED = {
    "check_fit_score_takes_y": "test_fit_returns_self_and_leaves_parameters_alone",
    "check_estimators_overwrite_params": "test_fit_returns_self_and_leaves_parameters_alone",
    "check_dont_overwrite_parameters": "test_fit_returns_self_and_leaves_parameters_alone",
    "check_estimators_fit_returns_self": "test_fit_returns_self_and_leaves_parameters_alone",
    "check_readonly_memmap_input": "not applicable: X is a DataFrame or strings, never a memory-mapped array",
    "check_estimators_unfitted": "test_unfitted_estimators_refuse_to_predict",
    "check_n_features_in_after_fitting": "test_feature_names_and_counts",
    "check_positive_only_tag_during_fit": "not applicable: positive_only is False, no input is refused for sign",
    "check_sample_weights_pandas_series": "test_sample_weight_is_checked",
    "check_sample_weights_not_an_array": "test_sample_weight_is_checked",
    "check_sample_weights_list": "test_sample_weight_is_checked",
    "check_sample_weights_shape": "test_sample_weight_is_checked",
    "check_sample_weights_not_overwritten": "test_sample_weight_is_checked",
    "check_sample_weight_equivalence_on_dense_data": "test_sample_weight_is_checked (uniform weights change "
                                                     "nothing; weight 0 as dropped: test_training.py)",
    "check_all_zero_sample_weights_error": "test_sample_weight_is_checked",
    "check_complex_data": "not applicable: complex numbers are neither schema values nor texts",
    "check_dtype_object": "test_bad_inputs_are_refused_in_scikit_learn_words (strings are the real input)",
    "check_estimators_empty_data_messages": "test_bad_inputs_are_refused_in_scikit_learn_words",
    "check_pipeline_consistency": "test_pickle_round_trip_and_subset_invariance (same predictions twice)",
    "check_estimators_nan_inf": "test_bad_inputs_are_refused_in_scikit_learn_words",
    "check_estimator_sparse_tag": "test_bad_inputs_are_refused_in_scikit_learn_words (sparse refused clearly)",
    "check_estimator_sparse_array": "test_bad_inputs_are_refused_in_scikit_learn_words",
    "check_estimator_sparse_matrix": "test_bad_inputs_are_refused_in_scikit_learn_words",
    "check_estimators_pickle": "test_pickle_round_trip_and_subset_invariance",
    "check_f_contiguous_array_estimator": "not applicable: no array input",
    "check_classifier_data_not_an_array": "not applicable: the inputs are not arrays to begin with",
    "check_classifiers_one_label": "test_bad_labels_are_refused_in_scikit_learn_words",
    "check_classifiers_classes": "test_predictions_follow_classes_order",
    "check_estimators_partial_fit_n_features": "not applicable: no partial_fit",
    "check_classifier_multioutput": "test_bad_labels_are_refused_in_scikit_learn_words (multi-output refused)",
    "check_classifiers_train": "test_predictions_follow_classes_order (shapes, classes_, proba rows sum to 1)",
    "check_classifiers_regression_target": "test_bad_labels_are_refused_in_scikit_learn_words",
    "check_supervised_y_no_nan": "test_bad_labels_are_refused_in_scikit_learn_words",
    "check_supervised_y_2d": "test_a_column_of_labels_is_one_label_per_example",
    "check_estimators_dtypes": "not applicable: column dtypes come from the schema; texts are strings",
    "check_fit_idempotent": "test_pickle_round_trip_and_subset_invariance (refit gives the same predictions)",
    "check_fit_check_is_fitted": "test_unfitted_estimators_refuse_to_predict",
    "check_n_features_in": "test_feature_names_and_counts",
    "check_fit1d": "test_bad_inputs_are_refused_in_scikit_learn_words (tabular needs a DataFrame)",
    "check_fit2d_predict1d": "test_bad_inputs_are_refused_in_scikit_learn_words (text takes exactly 1-D input)",
    "check_fit2d_1sample": "test_bad_inputs_are_refused_in_scikit_learn_words (one sample)",
    "check_fit2d_1feature": "not applicable: the features are the schema's columns",
    "check_methods_subset_invariance": "test_pickle_round_trip_and_subset_invariance",
    "check_methods_sample_order_invariance": "test_pickle_round_trip_and_subset_invariance",
    "check_dict_unchanged": "test_fit_returns_self_and_leaves_parameters_alone (predict changes no attribute)",
    "check_decision_proba_consistency": "test_predictions_follow_classes_order (decision agrees with proba)",
    "check_requires_y_none": "test_bad_labels_are_refused_in_scikit_learn_words (y=None)",
    "check_dataframe_column_names_consistency": "test_feature_names_and_counts",
    "check_param_validation": "not applicable: scikit-learn's own parameter-constraint machinery (ConfigError here)",
    "check_classifier_not_supporting_multiclass": "test_bad_labels_are_refused_in_scikit_learn_words (3 classes)",
    "check_class_weight_classifiers": "not applicable: class_weight here balances fraud against legit rows only",
    "check_class_weight_balanced_classifiers": "not applicable: as check_class_weight_classifiers",
    "check_non_transformer_estimators_n_iter": "not applicable: no max_iter",
    "check_estimators_data_not_an_array": "not applicable: the inputs are not arrays to begin with",
    "check_inplace_ensure_writeable": "not applicable: no array input",
    "check_array_api_input": "not applicable: array_api_support is False (torch inside, NumPy or lists outside)",
    "check_classifiers_one_label_sample_weights": "test_sample_weight_is_checked (weights do not hide a class: "
                                                  "a class of weight 0 still counts as one)",
    "check_parameters_default_constructible": "test_data_free_scikit_learn_checks for the text estimator; the "
                                              "tabular one needs its schema (the threat model) and has no default",
}


@parametrize_with_checks([tabular(), text()])
def test_scikit_learn_checks(estimator: BaseEstimator, check: Any) -> None:
    """What scikit-learn yields under the declared tags (its cloning check: X is never a bare array)."""
    check(estimator)


def _names(checks: Any) -> set[str]:
    return {getattr(c, "func", c).__name__ for c in checks}


@pytest.mark.parametrize("kind", KINDS)
def test_tags_declare_the_real_input_and_every_check_is_run_or_covered(kind: str) -> None:
    est = MAKE[kind]()
    tags = est.__sklearn_tags__()
    assert not tags.input_tags.two_d_array and tags.input_tags.string and tags.target_tags.required
    assert not tags.classifier_tags.multi_class
    assert _names(c for _, c in ec.estimator_checks_generator(est, legacy=True)) == {"check_estimator_cloneable"}

    class ArrayTags(type(est)):  # type: ignore[misc]
        def __sklearn_tags__(self) -> Any:
            tags = super().__sklearn_tags__()
            tags.input_tags.two_d_array = True
            return tags

    would_run = _names(c for _, c in ec.estimator_checks_generator(ArrayTags(**est.get_params()), legacy=True))
    assert would_run - set(RUN) - set(COVERED) == set()  # a check new in scikit-learn gets listed here
    listed = {reason.split(" ")[0] for reason in COVERED.values() if reason.startswith("test_")}
    defined = {name for name in globals() if name.startswith("test_")}
    assert listed <= defined  # every test named exists


@pytest.mark.parametrize(("kind", "check"), [*((kind, check) for kind in KINDS for check in RUN),
                                             ("text", "check_parameters_default_constructible")])
def test_data_free_scikit_learn_checks(kind: str, check: str) -> None:
    est = MAKE[kind]()
    getattr(ec, check)(type(est).__name__, est)


@pytest.fixture(scope="module")
def fitted() -> dict[str, BaseEstimator]:
    return {kind: MAKE[kind]().fit(*DATA[kind]) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_fit_returns_self_and_leaves_parameters_alone(kind: str, fitted: dict[str, BaseEstimator]) -> None:
    est = MAKE[kind]()
    before = joblib.hash(est.get_params())
    public = {k for k in vars(est) if not k.startswith("_")}
    assert est.fit(*DATA[kind]) is est
    assert joblib.hash(est.get_params()) == before
    assert all(k.endswith("_") for k in set(vars(est)) - public)  # fit sets only fitted attributes
    model = fitted[kind]
    state = joblib.hash({k: v for k, v in vars(model).items() if k != "model_"})
    model.predict(DATA[kind][0][:5])
    assert joblib.hash({k: v for k, v in vars(model).items() if k != "model_"}) == state


@pytest.mark.parametrize("kind", KINDS)
def test_unfitted_estimators_refuse_to_predict(kind: str) -> None:
    est = MAKE[kind]()
    for method in ("predict", "predict_proba"):
        with pytest.raises(NotFittedError):
            getattr(est, method)(DATA[kind][0][:3])
    twin = clone(MAKE[kind]().fit(*DATA[kind]))
    assert not hasattr(twin, "model_") and twin.get_params().keys() == est.get_params().keys()
    assert twin.set_params(epochs=3) is twin and twin.epochs == 3


def test_feature_names_and_counts(fitted: dict[str, BaseEstimator]) -> None:
    model = fitted["tabular"]
    assert model.n_features_in_ == TAB_X.shape[1]
    assert model.feature_names_in_.tolist() == list(TAB_X.columns)
    assert model.predict(TAB_X[TAB_X.columns[::-1]]).tolist() == model.predict(TAB_X).tolist()  # by name
    with pytest.raises(DataError, match=repr(TAB_X.columns[0])):
        model.predict(TAB_X.drop(columns=TAB_X.columns[0]))
    with pytest.raises(DataError, match="'surplus'"):
        model.predict(TAB_X.assign(surplus=1.0))


@pytest.mark.parametrize("kind", KINDS)
def test_predictions_follow_classes_order(kind: str) -> None:
    X, y = DATA[kind]
    named = np.where(y == 1, "a-positive", "b-negative")  # the positive class sorts first
    model = MAKE[kind]().set_params(pos_label="a-positive").fit(X, named)
    assert model.classes_.tolist() == ["a-positive", "b-negative"] and model.pos_label_ == "a-positive"
    proba, pred = model.predict_proba(X), model.predict(X)
    assert proba.shape == (len(y), 2) and pred.shape == (len(y),) and np.allclose(proba.sum(axis=1), 1)
    assert (pred == np.where(proba[:, 0] >= model.threshold_, "a-positive", "b-negative")).all()
    if hasattr(model, "decision_function"):
        assert ((model.decision_function(X) > 0) == (proba[:, 0] > model.threshold_)).mean() > 0.99


@pytest.mark.parametrize("kind", KINDS)
def test_pickle_round_trip_and_subset_invariance(kind: str, fitted: dict[str, BaseEstimator]) -> None:
    X, y = DATA[kind]
    model = fitted[kind]
    twin = pickle.loads(pickle.dumps(model))
    assert np.array_equal(twin.predict_proba(X), model.predict_proba(X))
    assert np.array_equal(twin.predict(X), model.predict(X))
    order = np.random.default_rng(0).permutation(len(y))
    shuffled = X.iloc[order] if isinstance(X, pd.DataFrame) else [X[i] for i in order]
    assert np.allclose(model.predict_proba(shuffled), model.predict_proba(X)[order], atol=1e-6)
    assert np.allclose(model.predict_proba(X[:7]), model.predict_proba(X)[:7], atol=1e-6)
    assert np.array_equal(MAKE[kind]().fit(X, y).predict_proba(X), model.predict_proba(X))  # refit: same model


def _nan_frame() -> pd.DataFrame:
    return TAB_X.assign(amount=TAB_X["amount"].astype(float).where(TAB_X.index != 3))


@pytest.mark.parametrize(
    ("kind", "X", "match"),
    [
        ("tabular", TAB_X.iloc[:0], "0 rows"),
        ("tabular", _nan_frame(), "column 'amount' has 1 missing"),
        ("tabular", TAB_X.assign(amount=np.inf), "column 'amount' holds infinite"),
        ("tabular", sparse.csr_matrix(np.ones((4, 3))), "Sparse data"),
        ("tabular", TAB_X.to_numpy(), "DataFrame"),
        ("text", [], "0 texts"),
        ("text", sparse.csr_matrix(np.ones((4, 3))), "Sparse data"),
        ("text", np.ones((4, 3)), "not strings"),
    ],
)
def test_bad_inputs_are_refused_in_scikit_learn_words(kind: str, X: Any, match: str,
                                                      fitted: dict[str, BaseEstimator]) -> None:
    est = MAKE[kind]()
    with pytest.raises(DataError, match=match):
        est.fit(X, np.resize([0, 1], X.shape[0] if hasattr(X, "shape") else len(X)))
    assert not hasattr(est, "model_")
    with pytest.raises(DataError, match=match):
        fitted[kind].predict_proba(X)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("y", "match"),
    [
        (None, "requires y to be passed"),
        ("regression", "Unknown label type: continuous"),
        ("two-outputs", "multi-output"),
        ("one-class", "only one class"),
        ("three-classes", "two classes"),
        ("one-sample", "minimum of 4"),
    ],
)
def test_bad_labels_are_refused_in_scikit_learn_words(kind: str, y: str | None, match: str) -> None:
    X, labels = DATA[kind]
    cases = {
        "regression": np.linspace(0.1, 0.9, len(labels)),
        "two-outputs": np.stack([labels, labels], axis=1),
        "one-class": np.zeros(len(labels), dtype=int),
        "three-classes": np.arange(len(labels)) % 3,
    }
    if y == "one-sample":
        X, target = X[:1], labels[:1]
    else:
        target = None if y is None else cases[y]
    est = MAKE[kind]()
    with pytest.raises(DataError, match=match) as caught:
        est.fit(X, target)
    assert isinstance(caught.value, ValueError) and not hasattr(est, "model_")


@pytest.mark.parametrize("kind", KINDS)
def test_a_column_of_labels_is_one_label_per_example(kind: str, fitted: dict[str, BaseEstimator]) -> None:
    X, y = DATA[kind]
    column = MAKE[kind]().fit(X, y.reshape(-1, 1))
    assert np.array_equal(column.predict_proba(X), fitted[kind].predict_proba(X))


@pytest.mark.parametrize("kind", KINDS)
def test_sample_weight_is_checked(kind: str, fitted: dict[str, BaseEstimator]) -> None:
    X, y = DATA[kind]
    n = len(y)
    for bad, match in [(np.ones(n - 1), "expected"), (np.ones((n, 2)), "expected"), (-np.ones(n), "negative"),
                       (np.full(n, np.nan), "non-finite"), (np.zeros(n), "at least one non-zero"),
                       (["a"] * n, "numbers")]:
        est = MAKE[kind]()
        with pytest.raises(DataError, match=match):
            est.fit(X, y, sample_weight=bad)
        assert not hasattr(est, "model_")
    weights = np.full(n, 3.0)
    uniform = MAKE[kind]().fit(X, y, sample_weight=weights)
    assert (weights == 3.0).all()  # not overwritten
    assert np.allclose(uniform.predict_proba(X), fitted[kind].predict_proba(X), atol=1e-5)  # only the ratio counts
    series = MAKE[kind]().fit(X, y, sample_weight=pd.Series(np.where(y == 1, 0.0, 1.0).tolist()))
    assert series.classes_.tolist() == [0, 1]  # a class of weight 0 is still a class
    assert not np.allclose(series.predict_proba(X), fitted[kind].predict_proba(X), atol=1e-3)


def test_trees_refuse_sample_weight() -> None:
    from sklearn.tree import DecisionTreeClassifier

    est = tabular().set_params(estimator=DecisionTreeClassifier(max_depth=2))
    with pytest.raises(ConfigError, match="sample_weight"):
        est.fit(TAB_X, TAB_Y, sample_weight=np.ones(len(TAB_Y)))


HELD_OUT = {"tabular": (lambda f: (f.drop(columns="is_fraud"), f["is_fraud"].to_numpy()))(generate(200, seed=1,
                                                                                                  fraud_rate=0.25)),
            "text": (lambda t: (t[0], np.asarray(t[1])))(demo_corpus(100, seed=2))}


@pytest.mark.parametrize("kind", KINDS)
def test_calibration_and_fixed_threshold_wrap_the_estimators(kind: str, fitted: dict[str, BaseEstimator]) -> None:
    """What the guides show: calibrated probabilities on held-out data, and a decision at a chosen threshold."""
    model = fitted[kind]
    X, y = HELD_OUT[kind]
    calibrated = CalibratedClassifierCV(FrozenEstimator(model), method="isotonic").fit(X, y)
    raw, cal = model.predict_proba(X)[:, 1], calibrated.predict_proba(X)[:, 1]
    assert cal.shape == raw.shape and calibrated.classes_.tolist() == model.classes_.tolist()
    order = np.argsort(raw, kind="stable")
    assert (np.diff(cal[order]) >= -1e-9).all()  # rises with P(positive): the columns were read the right way
    assert abs(cal.mean() - y.mean()) < 0.02  # calibrated on these rows: the base rate on average
    at_threshold = FixedThresholdClassifier(FrozenEstimator(model), threshold=model.threshold_,
                                            pos_label=model.pos_label_, response_method="predict_proba").fit(X, y)
    assert np.array_equal(at_threshold.predict(X), model.predict(X))
    laxer = FixedThresholdClassifier(FrozenEstimator(model), threshold=model.threshold_ / 2,
                                     pos_label=model.pos_label_, response_method="predict_proba").fit(X, y)
    assert (laxer.predict(X) == model.pos_label_).sum() >= (model.predict(X) == model.pos_label_).sum()


@pytest.mark.parametrize(("guide", "kind", "names"), [
    ("tabular.md", "tabular", {"clf": "model", "X": "X", "X_held_out": "X", "y_held_out": "y"}),
    ("text.md", "text", {"hardened": "model", "X_test": "X", "X_cal": "X", "y_cal": "y"}),
])
def test_the_guides_calibration_example_runs_as_written(guide: str, kind: str, names: dict[str, str],
                                                        fitted: dict[str, BaseEstimator]) -> None:
    text = (Path(__file__).parents[1] / "docs" / "guides" / guide).read_text(encoding="utf-8")
    (block,) = [b.split("```", 1)[0] for b in text.split("```python\n")[1:] if "CalibratedClassifierCV" in b]
    X, y = HELD_OUT[kind]
    values = {"model": fitted[kind], "X": X, "y": y}
    scope: dict[str, Any] = {name: values[source] for name, source in names.items()}
    exec(block, scope)
    assert scope["calibrated"].predict_proba(X).shape == (len(y), 2)
    positive = fitted[kind].pos_label_
    assert (scope["laxer"].predict(X) == positive).sum() >= (fitted[kind].predict(X) == positive).sum()
