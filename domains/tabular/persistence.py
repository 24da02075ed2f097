"""Saving and loading a fitted :class:`~domains.tabular.estimator.RobustTabularClassifier` without pickles.

A saved classifier is a folder:

- ``classifier.json``: the parameters, the schema, the threshold, ``classes_`` / ``pos_label_``, the
  history and the SHA-256 of every other file (a file that does not match is refused before it is read);
- the neural path: ``model.safetensors`` (the weights; ``classifier.json`` holds the encoder's spec)
  and, with a ``preprocessor``, ``preprocessor.skops`` (the ColumnTransformer, as given and fitted);
- the ``estimator`` path: XGBoost's own JSON (``estimator.json``), LightGBM's text model
  (``estimator.txt``), scikit-learn's ``HistGradientBoostingClassifier`` in ``estimator.skops``, or
  :class:`~domains.tabular.robust_trees.RobustBoostedTrees` as its arrays in ``estimator.safetensors`` (its
  parameters and schema in ``classifier.json``).

skops files (``pip install -e ".[skops]"``) are read with an explicit list of trusted types
(:data:`TRUSTED_TYPES`): a file naming any other type or function is refused, never loaded, so a file
cannot run code on load. Other scikit-learn models are refused at save time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file
from sklearn.base import clone
from torch import nn

from domains.tabular.blackbox import SklearnModel
from domains.tabular.estimator import _mlp
from domains.tabular.model import SchemaEncoder, TabularMLP
from domains.tabular.robust_trees import RobustBoostedTrees
from domains.tabular.schema import Schema
from domains.tabular.sklearn_bridge import bridge
from domains.tabular.trees import TypedEstimator, require_library
from robustkit.errors import ConfigError, ModelError
from robustkit.saved import (
    MANIFEST,
    check_json,
    classes_from,
    classes_meta,
    load_folder,
    method_config,
    method_from,
    module_state,
    read_weights,
    write_folder,
)

__all__ = ["TRUSTED_TYPES", "estimator_writer", "load_classifier", "read_estimator", "save_classifier"]

FORMAT = "robustkit.tabular.RobustTabularClassifier"
VERSION = 1
#: types and functions a skops file may name beyond skops' own defaults (numpy, scikit-learn estimators,
#: builtins): the fitted trees of HistGradientBoosting and the validator its preprocessing holds
TRUSTED_TYPES = (
    "functools.partial",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.utils.validation.check_array",
)


def _skops() -> Any:
    try:
        import skops.io as sio
    except ImportError:
        raise ConfigError('saving a scikit-learn model (a preprocessor or a HistGradientBoosting estimator) needs '
                          'skops: pip install -e ".[skops]"') from None
    return sio


def _library(estimator: Any) -> str:
    """Which format saves ``estimator``: ``xgboost``, ``lightgbm``, ``skops`` (HistGradientBoosting) or
    ``robust-trees`` (:class:`~domains.tabular.robust_trees.RobustBoostedTrees`)."""
    if isinstance(estimator, RobustBoostedTrees):
        return "robust-trees"
    if isinstance(estimator, LightGBMBooster):  # a LightGBM model read back from its text file
        return "lightgbm"
    module = type(estimator).__module__.split(".")[0]
    if module in ("xgboost", "lightgbm"):
        return module
    from sklearn.ensemble import HistGradientBoostingClassifier

    if type(estimator) is HistGradientBoostingClassifier:
        return "skops"
    raise ModelError(f"cannot save a {type(estimator).__name__} without a pickle: saved estimators are "
                     "HistGradientBoostingClassifier (skops), xgboost.XGBClassifier (JSON), "
                     "lightgbm.LGBMClassifier (text) and RobustBoostedTrees (safetensors)")


class LightGBMBooster:
    """A LightGBM model read from its text file, with ``predict_proba`` over :func:`typed_frame` rows and
    ``booster_`` (what :func:`~domains.tabular.trees.split_thresholds` reads)."""

    def __init__(self, booster: Any) -> None:
        self.booster_ = booster
        self.classes_ = np.array([0, 1])

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        p = np.asarray(self.booster_.predict(X), dtype=np.float64)
        return np.stack([1 - p, p], axis=1)


def estimator_writer(param: Any, fitted: Any) -> tuple[dict[str, Any], Callable[[Path], Any]]:
    """How to save the tree ensemble ``fitted`` (unfitted parameters ``param``) without a pickle: the entries
    ``estimator`` (its format) and ``estimator_params`` that the folder's JSON keeps, and a function that
    writes its file into a folder (``estimator.skops``, XGBoost's ``estimator.json`` or LightGBM's
    ``estimator.txt``); :func:`read_estimator` reads them back. Every check runs here, before any write."""
    library = _library(fitted)
    if library == "skops":
        blob = _skops().dumps({"param": param, "fitted": fitted})
        return {"estimator": library}, lambda d: (d / "estimator.skops").write_bytes(blob)
    if library == "robust-trees":
        described, arrays = fitted.state()
        return ({"estimator": library, "estimator_state": described},
                lambda d: save_numpy(arrays, str(d / "estimator.safetensors")))
    try:
        params = json.loads(json.dumps(param.get_params(deep=False)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot save the estimator's parameters as JSON ({exc})") from None
    described = {"estimator": library, "estimator_params": params}
    if library == "xgboost":
        return described, lambda d: fitted.save_model(str(d / "estimator.json"))
    return described, lambda d: fitted.booster_.save_model(str(d / "estimator.txt"))


def read_estimator(path: Path, meta: dict[str, Any], source: Path) -> tuple[Any, Any]:
    """The unfitted and the fitted estimator that :func:`estimator_writer` saved in the folder ``path``, as
    ``meta`` (read from ``source``) describes them; XGBoost and LightGBM are imported only here."""
    library = meta.get("estimator")
    if library == "skops":
        parts = _read_skops(path / "estimator.skops")
        return parts["param"], parts["fitted"]
    if library == "robust-trees":
        described = meta.get("estimator_state")
        if not isinstance(described, dict):
            raise ModelError(f"{source}: estimator_state must be an object, got {described!r}")
        fitted = RobustBoostedTrees.from_state(described, load_numpy(str(path / "estimator.safetensors")))
        return clone(fitted), fitted
    if library not in ("xgboost", "lightgbm"):
        raise ModelError(f"{source}: unknown estimator format {library!r}")
    require_library(str(library))
    params = meta.get("estimator_params", {})
    if not isinstance(params, dict):
        raise ModelError(f"{source}: estimator_params must be an object, got {params!r}")
    if library == "xgboost":
        import xgboost

        fitted = xgboost.XGBClassifier(**params)
        fitted.load_model(str(path / "estimator.json"))
        return xgboost.XGBClassifier(**params), fitted
    import lightgbm

    return lightgbm.LGBMClassifier(**params), LightGBMBooster(lightgbm.Booster(model_file=str(path / "estimator.txt")))


def _search_training(**options: Any) -> Any:
    from domains.tabular.attacks import SearchTraining

    return SearchTraining(**options)


def save_classifier(clf: Any, path: str | Path) -> Path:
    """Write fitted ``clf`` to the folder ``path`` (replaced whole, atomically); every check runs first."""
    schema: Schema = clf.schema
    params = {k: v for k, v in clf.get_params(deep=False).items()
              if k not in ("schema", "method", "estimator", "preprocessor", "module")}
    params["hidden"] = [int(h) for h in params["hidden"]]
    if params["class_weight"] is not None and not isinstance(params["class_weight"], str):
        params["class_weight"] = [float(w) for w in params["class_weight"]]
    meta: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "params": params,
        "method": method_config(clf.method, extra=("pgd+search",)),
        "schema": schema.to_dict(), "threshold": float(clf.threshold_), "budget": float(clf.budget_),
        **classes_meta(clf.classes_, clf.pos_label_),
        "feature_names_in": [str(c) for c in clf.feature_names_in_], "history": clf.history_.to_dict(orient="list"),
    }
    check_json(meta, "this classifier's parameters")
    writers = []
    if clf.estimator_ is not None:
        described, write = estimator_writer(clf.estimator, clf.estimator_)
        meta.update(described)
        writers.append(write)
    else:
        state = module_state(clf.model_)
        writers.append(lambda d: save_file(state, str(d / "model.safetensors")))
        meta["module"] = clf.module is not None
        if clf.preprocessor_ is None:  # the encoder's standardisation; the built-in model's spec holds it
            meta["spec"] = clf.model_.spec if not meta["module"] else {
                "mean": clf.model_[0].mean.tolist(), "std": clf.model_[0].std.tolist()}
        else:
            blob = _skops().dumps({"param": clf.preprocessor, "fitted": clf.preprocessor_})
            writers.append(lambda d: (d / "preprocessor.skops").write_bytes(blob))

    return write_folder(path, meta, writers)


def _read_skops(path: Path) -> dict[str, Any]:
    sio = _skops()
    data = path.read_bytes()
    try:
        untrusted = [t for t in sio.get_untrusted_types(data=data) if t not in TRUSTED_TYPES]
    except Exception as exc:  # skops' own parse failure: the file is not a skops file
        raise ModelError(f"{path} is not a readable skops file ({exc})") from None
    if untrusted:
        raise ModelError(f"{path} names types robustkit does not trust to load ({', '.join(sorted(untrusted))}): "
                         "refused, nothing was loaded")
    try:
        loaded = sio.loads(data, trusted=list(TRUSTED_TYPES))
    except Exception as exc:  # as above
        raise ModelError(f"{path} is not a readable skops file ({exc})") from None
    if not isinstance(loaded, dict) or set(loaded) != {"param", "fitted"}:
        raise ModelError(f"{path} does not hold a saved RobustTabularClassifier part")
    return loaded


def load_classifier(cls: type, path: str | Path, module: Any = None) -> Any:
    """The classifier :func:`save_classifier` wrote to ``path``: every file checked against its SHA-256 first;
    ``module``: the ``module=`` it was trained with."""
    return load_folder(path, FORMAT, VERSION, "RobustTabularClassifier", module, partial(_build, cls))


def _build(cls: type, path: Path, meta: dict[str, Any], module: Any) -> Any:
    schema = Schema.from_dict(meta["schema"])
    params = dict(meta["params"])
    params["hidden"] = tuple(params["hidden"])
    clf = cls(schema, method=method_from(meta["method"], {"pgd+search": _search_training}), module=module, **params)
    clf.classes_, clf.pos_label_ = classes_from(meta)
    clf.feature_names_in_ = np.asarray(meta["feature_names_in"], dtype=object)
    clf.n_features_in_ = len(clf.feature_names_in_)
    clf.threshold_, clf.budget_ = float(meta["threshold"]), float(meta["budget"])
    if not (math.isfinite(clf.threshold_) and 0 <= clf.threshold_ <= 1):
        raise ModelError(f"{path / MANIFEST}: threshold {clf.threshold_} is not a probability")
    clf.history_ = pd.DataFrame(meta["history"])
    clf.preprocessor_ = None
    library = meta.get("estimator")
    if library is None:
        clf.estimator_ = None
        if (path / "preprocessor.skops").is_file():
            parts = _read_skops(path / "preprocessor.skops")
            clf.preprocessor, clf.preprocessor_ = parts["param"], parts["fitted"]
        if clf.preprocessor_ is None and module is None:
            model: nn.Module = TabularMLP(meta["spec"])
        else:
            encoder: Any = bridge(clf.preprocessor_, schema) if clf.preprocessor_ is not None else SchemaEncoder(
                schema, meta["spec"]["mean"], meta["spec"]["std"])
            model = clf._with_module(encoder) if module is not None else nn.Sequential(
                encoder, _mlp(encoder.out_features, clf.hidden))
        model.load_state_dict(read_weights(path / "model.safetensors"), strict=True)
        clf.model_ = model.eval()
        return clf
    clf.estimator, fitted = read_estimator(path, meta, path / MANIFEST)
    clf.estimator_ = fitted
    clf.model_ = SklearnModel(TypedEstimator(fitted, schema), schema).eval()
    return clf
