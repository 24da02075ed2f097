"""RobustTabularClassifier.save / load: the same probabilities after a round trip on every path, and no
file that was changed, pickled or names an untrusted type is ever loaded."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from domains.tabular.estimator import RobustTabularClassifier
from domains.tabular.synthetic import card_schema, generate
from robustkit.errors import ConfigError, ModelError
from tests.test_no_pickles import Tripwire

SCHEMA = card_schema()
DF = generate(400, seed=0, fraud_rate=0.2)
X, Y = DF.drop(columns="is_fraud"), DF["is_fraud"].map({0: "ok", 1: "chargeback"})


class OwnTrees(HistGradientBoostingClassifier):
    """A user's subclass: skops would need its type trusted, so it is refused."""


def fitted(**kw: Any) -> RobustTabularClassifier:
    return RobustTabularClassifier(SCHEMA, method="standard", epochs=1, pos_label="chargeback", **kw).fit(X, Y)


def round_trip(clf: RobustTabularClassifier, tmp_path: Path) -> RobustTabularClassifier:
    again = RobustTabularClassifier.load(clf.save(tmp_path / "clf"))
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(again.predict(X), clf.predict(X))
    assert (again.threshold_, again.pos_label_, again.classes_.tolist()) == (
        clf.threshold_, clf.pos_label_, clf.classes_.tolist())
    assert again.get_params(deep=False).keys() == clf.get_params(deep=False).keys()
    return again


def rewrite_listed_digest(folder: Path, name: str) -> None:
    """What an attacker who edits a file also does: update classifier.json's SHA-256 of it."""
    meta = json.loads((folder / "classifier.json").read_text())
    meta["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "classifier.json").write_text(json.dumps(meta))


def test_the_neural_classifier_loads_back_identical_and_a_changed_weight_file_is_refused(tmp_path: Path) -> None:
    clf = fitted()
    round_trip(clf, tmp_path)
    weights = tmp_path / "clf" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="changed after it was saved"):
        RobustTabularClassifier.load(tmp_path / "clf")


def test_a_pickle_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    proof = tmp_path / "proof"
    for path in (tmp_path / "clf.pkl", tmp_path / "clf"):
        path.write_bytes(pickle.dumps(Tripwire(proof)))
        with pytest.raises(ModelError, match="pickle"):
            RobustTabularClassifier.load(path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "model.pkl").write_bytes(pickle.dumps(Tripwire(proof)))
    with pytest.raises(ModelError, match="pickles are refused"):
        RobustTabularClassifier.load(tmp_path / "folder")
    assert not proof.exists()


def test_an_estimator_without_a_safe_format_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    clf = fitted(estimator=OwnTrees(max_iter=3), rounds=0)
    with pytest.raises(ModelError, match="without a pickle"):
        clf.save(tmp_path / "clf")
    assert not (tmp_path / "clf").exists()


def test_without_skops_saving_a_scikit_learn_model_names_the_extra(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clf = fitted(estimator=HistGradientBoostingClassifier(max_iter=5), rounds=0)
    monkeypatch.setitem(sys.modules, "skops", None)
    monkeypatch.setitem(sys.modules, "skops.io", None)
    with pytest.raises(ConfigError, match=r"\.\[skops\]"):
        clf.save(tmp_path / "clf")
    assert not (tmp_path / "clf").exists()


def test_scikit_learn_parts_load_back_through_skops_and_an_untrusted_type_is_refused(tmp_path: Path) -> None:
    sio = pytest.importorskip("skops.io")
    numeric = [c.name for c in SCHEMA.columns if c.numeric]
    categorical = [c.name for c in SCHEMA.columns if not c.numeric]
    ct = ColumnTransformer([("n", StandardScaler(), numeric), ("c", OneHotEncoder(handle_unknown="ignore"),
                                                                  categorical)])
    with_pre = round_trip(fitted(preprocessor=ct), tmp_path / "pre")
    assert with_pre.preprocessor_ is not None and not hasattr(with_pre.preprocessor, "transformers_")
    trees = round_trip(fitted(estimator=HistGradientBoostingClassifier(max_iter=5, random_state=0), rounds=0),
                       tmp_path / "hgb")
    rows, _ = trees.attack(X[Y == "chargeback"].head(10))  # thresholds read from the loaded trees
    assert len(rows) == 10

    # a file naming os.system, its digest updated: refused by type, before anything is built
    folder = tmp_path / "pre" / "clf"
    evil = {"param": ct, "fitted": FunctionTransformer(func=os.system)}
    (folder / "preprocessor.skops").write_bytes(sio.dumps(evil))
    rewrite_listed_digest(folder, "preprocessor.skops")
    with pytest.raises(ModelError, match="does not trust"):
        RobustTabularClassifier.load(folder)


@pytest.mark.parametrize("library", ["xgboost", "lightgbm"])
def test_xgboost_and_lightgbm_load_back_from_their_own_formats(library: str, tmp_path: Path) -> None:
    lib = pytest.importorskip(library)
    model = (lib.XGBClassifier(n_estimators=5, enable_categorical=True, tree_method="hist") if library == "xgboost"
             else lib.LGBMClassifier(n_estimators=5, verbose=-1))
    again = round_trip(fitted(estimator=model, rounds=0), tmp_path)
    assert type(again.estimator) is type(model)
    assert {p.name for p in (tmp_path / "clf").iterdir()} == {
        "classifier.json", "estimator.json" if library == "xgboost" else "estimator.txt"}
    assert isinstance(again.history_, pd.DataFrame)
    # a loaded model saves again (evaluate --model on a tree run re-saves it): the same scores once more
    round_trip(again, tmp_path / "again")
