"""Models without gradients: transfer from a distilled surrogate and a gradient-free search, under the schema."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import HistGradientBoostingClassifier

import robustkit as rk
from domains.tabular.blackbox import SklearnModel, distill_surrogate, evaluate_blackbox
from domains.tabular.space import encode
from domains.tabular.synthetic import card_schema, generate


@pytest.fixture(scope="module")
def boosted() -> tuple[SklearnModel, object, object, float]:
    schema = card_schema()
    df = generate(3000, seed=3)
    train, test = df.iloc[:2000], df.iloc[2000:].reset_index(drop=True)
    features = train[schema.names]
    clf = HistGradientBoostingClassifier(max_iter=60, random_state=0,
                                         categorical_features=["merchant_category", "country"])
    clf.fit(features.astype({"merchant_category": "category", "country": "category"}), train["is_fraud"])

    class Categorical:
        """scikit-learn's native categorical support wants the pandas category dtype; the tree attack reads
        the thresholds of ``estimator_``."""

        estimator_ = clf

        def predict_proba(self, rows: object) -> np.ndarray:
            return clf.predict_proba(rows.astype({"merchant_category": "category", "country": "category"}))

    return SklearnModel(Categorical(), schema), train, test, 0.5


def test_a_tree_model_has_no_gradient_but_transfer_and_search_both_evade_it(boosted: tuple) -> None:
    model, train, test, threshold = boosted
    out = evaluate_blackbox(model, train, test, card_schema(), threshold=threshold, queries=100, pgd_steps=20,
                            restarts=1, surrogate_epochs=4)
    recall = out["recall"]
    assert recall["clean"] > 0.5  # the trees catch most fraud when nobody adapts
    assert recall["transfer (upper bound)"] < recall["clean"] - 0.05
    assert recall["search"] < recall["clean"] - 0.05
    assert recall["trees"] < recall["clean"] - 0.05
    assert recall["worst"] <= min(recall["transfer (upper bound)"], recall["search"], recall["trees"])
    assert out["valid_share"] == {"trees": 1.0, "transfer (upper bound)": 1.0, "search": 1.0}
    frauds = test[test["is_fraud"] == 1]
    rows, table = out["rows"], out["table"]  # the rows kept, in the user's columns, each valid
    assert list(rows.columns) == card_schema().names and rows.index.equals(frauds.index)
    assert card_schema().validate(rows, frauds).all()
    assert table["fooled"].mean() == pytest.approx(recall["clean"] - recall["worst"])
    with torch.no_grad():  # each row claimed as evading is one the model lets through
        p = model(encode(card_schema(), rows[table["fooled"].to_numpy()])).softmax(1)[:, 1]
    assert (p < threshold).all()


def test_the_surrogate_copies_the_model_s_decisions(boosted: tuple) -> None:
    model, train, test, threshold = boosted
    surrogate = distill_surrogate(model, train, card_schema(), threshold, epochs=4)
    x = encode(card_schema(), test)
    with torch.no_grad():
        agree = (surrogate(x).argmax(1) == (model(x).softmax(1)[:, 1] >= threshold).long()).float().mean()
    assert agree > 0.9


def test_a_model_without_predict_proba_is_refused() -> None:
    with pytest.raises(rk.ModelError, match="predict_proba"):
        SklearnModel(object(), card_schema())
