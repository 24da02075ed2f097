"""A scikit-learn classifier for fraud rows, trained adversarially under a schema's threat model.

:class:`RobustTabularClassifier` takes raw DataFrames in the schema's columns. It owns its
preprocessing: by default a :class:`~domains.tabular.model.TabularMLP` (schema-built encoder +
MLP); with ``preprocessor`` a scikit-learn ``ColumnTransformer`` bridged into torch
(:mod:`domains.tabular.sklearn_bridge`) followed by an MLP. It trains through
:class:`robustkit.AdversarialTrainer` over :class:`~domains.tabular.attacks.SparseSchemaSpace`, attacking
only fraud rows, with class weights for the imbalance, and decides at the threshold that gives
``target_fpr`` false positives on an internal validation split. It clones, nests in a ``Pipeline``
and works with ``GridSearchCV`` like any scikit-learn classifier.

With ``estimator`` (any classifier with ``fit(X, y, sample_weight=...)`` and ``predict_proba``, such as
scikit-learn's ``HistGradientBoostingClassifier``, XGBoost or LightGBM) it trains that model instead,
on :func:`~domains.tabular.trees.typed_frame` rows, hardened by adversarial data augmentation
(:func:`~domains.tabular.trees.harden_trees`; ``method="standard"``: no rounds), and attacks it with
:func:`~domains.tabular.trees.tree_attack`.

Labels: two classes. ``pos_label`` names fraud, the class an attacker wants to leave; without it,
1 (of 0/1 or -1/1), True, or "fraud" is, and any other pair of labels is refused rather than guessed.
``classes_`` is sorted as in scikit-learn; ``pos_label_`` is the fraud class, and ``predict_proba``'s
columns follow ``classes_``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.utils.data import TensorDataset

from domains.tabular.attacks import worst_case
from domains.tabular.blackbox import SklearnModel
from domains.tabular.model import TabularMLP
from domains.tabular.schema import Schema
from domains.tabular.sklearn_bridge import bridge
from domains.tabular.space import SchemaSpace, encode, repair
from domains.tabular.trees import TypedEstimator, harden_trees, tree_attack
from robustkit.attacks import PGD
from robustkit.domain import DatasetInfo, DomainData
from robustkit.errors import ConfigError, DataError
from robustkit.evaluation.binary import binary_labels, decide, known_positive, threshold_at_fpr, two_columns
from robustkit.models import ThresholdModel, frozen_eval, logits_of
from robustkit.training import methods as methods_mod
from robustkit.training.callbacks import EpochLog, check_verbose
from robustkit.training.fit import TrainSettings, fit_model

__all__ = ["RobustTabularClassifier"]


def _mlp(width: int, hidden: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 2))
    return nn.Sequential(*layers)


class RobustTabularClassifier(ClassifierMixin, BaseEstimator):
    """Fraud classifier on raw rows, hardened against ``schema``'s attacker (see the module docstring).

    Args:
        schema: the feature columns and what an attacker may change (:class:`~domains.tabular.schema.Schema`).
        method: training method, a name (``standard``, ``fgsm-mix``, ``fast``, ``pgd``, ``trades``,
            ``free``) or a configured ``robustkit.methods`` object.
        budget: attack cost budget while training (default: the schema's).
        epochs, batch_size, lr: training length, batch size and Adam learning rate.
        hidden: widths of the MLP's hidden layers.
        target_fpr: false-positive rate on the validation split that fixes the operating threshold.
        class_weight: ``"balanced"`` (loss weights from the class counts), per-class weights, or None.
        preprocessor: optional scikit-learn ``ColumnTransformer``: an unfitted one is cloned and
            fitted on the training split, a fitted one is used as it is; either is bridged into torch.
        random_state: seed of the split, the weights, the data order and the attacks (None: random).
        verbose: show progress bars and one line per epoch (loss, validation clean and robust
            accuracy, seconds, time left) on standard error.
        validation_fraction: share of the rows held out for the threshold and the best-epoch choice.
        pos_label: the label of fraud (default: 1, True or "fraud"; other labels need it).
        estimator: an unfitted classifier with ``predict_proba`` to train instead of the MLP (cloned).
        rounds: attack-and-refit rounds of :func:`~domains.tabular.trees.harden_trees` (``estimator`` only).

    Example:
        >>> from domains.tabular.synthetic import card_schema, generate
        >>> df = generate(400, seed=0, fraud_rate=0.15)
        >>> X, y = df.drop(columns="is_fraud"), df["is_fraud"]
        >>> clf = RobustTabularClassifier(card_schema(), method="pgd", epochs=1).fit(X, y)
        >>> clf.predict_proba(X.head(3)).shape, clf.classes_.tolist(), 0 < clf.threshold_ < 1
        ((3, 2), [0, 1], True)
        >>> named = y.map({0: "ok", 1: "chargeback"})
        >>> RobustTabularClassifier(card_schema(), epochs=1, pos_label="chargeback").fit(X, named).pos_label_
        'chargeback'
        >>> sorted(clf.evaluate(X, y, attack="pgd", steps=5))
        ['attack', 'attack_success_rate', 'budget', 'n_fraud', 'recall_attacked', 'recall_clean']
    """

    def __init__(
        self,
        schema: Schema,
        method: Any = "pgd",
        budget: float | None = None,
        epochs: int = 10,
        batch_size: int = 128,
        lr: float = 3e-3,
        hidden: Sequence[int] = (64, 64),
        target_fpr: float = 0.01,
        class_weight: str | Sequence[float] | None = "balanced",
        preprocessor: Any = None,
        random_state: int | None = 0,
        validation_fraction: float = 0.2,
        pos_label: Any = None,
        verbose: bool | int = False,
        estimator: Any = None,
        rounds: int = 2,
    ) -> None:
        self.schema = schema
        self.method = method
        self.budget = budget
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.hidden = hidden
        self.target_fpr = target_fpr
        self.class_weight = class_weight
        self.preprocessor = preprocessor
        self.random_state = random_state
        self.validation_fraction = validation_fraction
        self.pos_label = pos_label
        self.verbose = verbose
        self.estimator = estimator
        self.rounds = rounds

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.categorical = True
        tags.classifier_tags.multi_class = False
        return tags

    # ----------------------------------------------------------------- checks
    def _check_params(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")

        if not isinstance(self.schema, Schema):
            raise ConfigError(f"schema must be a domains.tabular Schema, got {type(self.schema).__name__}: "
                              "build one with Schema([...]), Schema.load(path) or Schema.infer(df)")
        if not isinstance(self.method, methods_mod.Method) and self.method not in methods_mod.NAMES:
            raise ConfigError(f"method must be one of {', '.join(methods_mod.NAMES)} or a robustkit.methods "
                              f"object, got {self.method!r}")
        positive_int("epochs")
        positive_int("batch_size")
        check_verbose(self.verbose)
        if self.budget is not None and not (isinstance(self.budget, int | float) and math.isfinite(self.budget)
                                            and self.budget >= 0):
            raise ConfigError(f"budget must be a number >= 0 or None (the schema's), got {self.budget!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a number > 0, got {self.lr!r}")
        hidden = self.hidden
        if isinstance(hidden, int | str) or not all(
                isinstance(h, int | np.integer) and not isinstance(h, bool) and h > 0 for h in hidden):
            raise ConfigError(f"hidden must be a sequence of positive layer widths such as (64, 64), got {hidden!r}")
        for name in ("target_fpr", "validation_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < 1):
                raise ConfigError(f"{name} must lie strictly between 0 and 1, got {value!r}")
        cw = self.class_weight
        if isinstance(cw, str) and cw != "balanced":
            raise ConfigError(f"class_weight must be 'balanced', two weights or None, got {cw!r}")
        if cw is not None and not isinstance(cw, str) and len(cw) != 2:
            raise ConfigError(f"class_weight needs one weight per class (2), got {cw!r}")
        if self.estimator is not None and not (hasattr(self.estimator, "fit") and hasattr(self.estimator,
                                                                                          "predict_proba")):
            raise ConfigError(f"estimator must be a classifier with fit and predict_proba (e.g. "
                              f"HistGradientBoostingClassifier()), got {type(self.estimator).__name__}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int | np.integer) or self.rounds < 0:
            raise ConfigError(f"rounds must be an integer >= 0, got {self.rounds!r}")
        if self.preprocessor is not None and not isinstance(self.preprocessor, ColumnTransformer):
            raise ConfigError(f"preprocessor must be a scikit-learn ColumnTransformer or None, got "
                              f"{type(self.preprocessor).__name__}")

    def _features(self, X: Any) -> pd.DataFrame:
        """``X`` checked against the schema: a DataFrame with exactly its feature columns."""
        schema: Schema = self.schema
        if not isinstance(X, pd.DataFrame):
            raise DataError(f"X must be a pandas DataFrame with the schema's columns ({', '.join(schema.names)}), "
                            f"got {type(X).__name__}")
        if schema.target is not None and schema.target in X.columns:
            raise DataError(f"X holds the target column {schema.target!r}: drop it from X and pass it as y")
        Schema(schema.columns, schema.budget).check_frame(X, what="X")
        return X[schema.names]

    # ----------------------------------------------------------------- training
    def fit(self, X: pd.DataFrame, y: Any) -> RobustTabularClassifier:
        """Train on ``X`` (the schema's columns) and ``y`` (binary); every check runs before training."""
        self._check_params()
        features = self._features(X)
        labels, classes, positive = binary_labels(y, len(features), ("legit", "fraud"), pos_label=self.pos_label)
        seed = int(np.random.default_rng().integers(2**31)) if self.random_state is None else int(self.random_state)
        try:
            i_train, i_val = train_test_split(np.arange(len(labels)), test_size=self.validation_fraction,
                                              stratify=labels, random_state=seed)
        except ValueError as exc:
            raise DataError(f"cannot hold out validation_fraction={self.validation_fraction} of {len(labels)} rows "
                            f"with both classes on each side: {exc}") from None
        schema: Schema = self.schema
        train, val = features.iloc[np.sort(i_train)], features.iloc[np.sort(i_val)]
        y_train, y_val = torch.as_tensor(labels[np.sort(i_train)]), torch.as_tensor(labels[np.sort(i_val)])
        x_train, x_val = encode(schema, train), encode(schema, val)
        self.classes_ = classes
        self.pos_label_ = positive
        self.n_features_in_ = X.shape[1]
        self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
        if self.estimator is not None:
            return self._fit_estimator(train, y_train.numpy(), x_val, y_val, seed)

        torch.manual_seed(seed)
        self.preprocessor_ = None
        if self.preprocessor is None:
            numeric = [c.name for c in schema.columns if c.numeric]
            std = [float(train[c].std()) for c in numeric]
            spec = {"schema": schema.to_dict(), "mean": [float(train[c].mean()) for c in numeric],
                    "std": [s if math.isfinite(s) and s > 0 else 1.0 for s in std], "hidden": list(self.hidden)}
            model: nn.Module = TabularMLP(spec)
        else:
            pre = self.preprocessor
            pre = copy.deepcopy(pre) if hasattr(pre, "transformers_") else clone(pre).fit(train)
            encoder = bridge(pre, schema)
            self.preprocessor_ = pre
            model = nn.Sequential(encoder, _mlp(encoder.out_features, self.hidden))
        method = copy.deepcopy(self.method) if isinstance(self.method, methods_mod.Method) else self.method
        class_weights = self.class_weight if self.class_weight is None or isinstance(self.class_weight, str) \
            else [float(w) for w in self.class_weight]
        budget = schema.budget if self.budget is None else float(self.budget)
        data = DomainData(TensorDataset(x_train, y_train), TensorDataset(x_val, y_val), TensorDataset(x_val, y_val),
                          DatasetInfo("fit", split=f"{len(train)}/{len(val)}", n_classes=2),
                          {"schema": schema, "target_fpr": float(self.target_fpr)})
        from domains.tabular import TabularDomain  # the package imports this module first

        # the one training path `robustkit harden tabular` takes: its space, attackable rows and threshold
        fitted = fit_model(TabularDomain(), data, model, TrainSettings(
            method=method, budget=budget, epochs=int(self.epochs), batch_size=int(self.batch_size),
            lr=float(self.lr), seed=seed, class_weights=class_weights, progress=bool(self.verbose),
            callbacks=(EpochLog(type(self).__name__),) if self.verbose else ()))
        assert fitted.threshold is not None
        self.estimator_ = None
        self.model_ = model
        self.history_ = pd.DataFrame(fitted.history)
        self.budget_ = budget
        self.threshold_ = fitted.threshold
        return self

    def _fit_estimator(self, train: pd.DataFrame, y_train: np.ndarray, x_val: torch.Tensor, y_val: torch.Tensor,
                       seed: int) -> RobustTabularClassifier:
        """The ``estimator`` path of :meth:`fit`: adversarial data augmentation in rounds."""
        schema: Schema = self.schema
        self.budget_ = schema.budget if self.budget is None else float(self.budget)
        rounds = 0 if methods_mod.get(self.method).name == "standard" else int(self.rounds)
        fitted, self.history_ = harden_trees(self.estimator, schema.with_budget(self.budget_), train, y_train,
                                             target_fpr=float(self.target_fpr), rounds=rounds, seed=seed)
        self.estimator_ = fitted
        self.preprocessor_ = None
        self.model_ = SklearnModel(TypedEstimator(fitted, schema), schema).eval()
        self.threshold_ = threshold_at_fpr(self._scores(x_val)[y_val == 0], float(self.target_fpr))
        return self

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write the fitted classifier to the folder ``path`` without pickles (replaced whole, atomically):
        safetensors weights, XGBoost JSON, LightGBM text or skops with trusted types, and JSON
        (:mod:`domains.tabular.persistence`). Returns ``path``."""
        check_is_fitted(self, "model_")
        from domains.tabular.persistence import save_classifier  # it builds this class: imported when used

        return save_classifier(self, path)

    @classmethod
    def load(cls, path: str | Path) -> RobustTabularClassifier:
        """The classifier :meth:`save` wrote to ``path``; a changed file, a pickle or a skops file naming an
        untrusted type is refused (:class:`~robustkit.errors.ModelError`) before anything is loaded.

        Example:
            >>> import tempfile
            >>> from domains.tabular.synthetic import card_schema, generate
            >>> df = generate(300, seed=0, fraud_rate=0.2)
            >>> X, y = df.drop(columns="is_fraud"), df["is_fraud"]
            >>> clf = RobustTabularClassifier(card_schema(), method="standard", epochs=1).fit(X, y)
            >>> with tempfile.TemporaryDirectory() as d:
            ...     again = RobustTabularClassifier.load(clf.save(f"{d}/clf"))
            >>> bool((again.predict_proba(X) == clf.predict_proba(X)).all())
            True
        """
        from domains.tabular.persistence import load_classifier

        loaded: RobustTabularClassifier = load_classifier(cls, path)
        return loaded

    # ----------------------------------------------------------------- prediction
    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        with frozen_eval(self.model_), torch.no_grad():
            return torch.softmax(logits_of(self.model_(x)).double(), dim=1)[:, 1]

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """``(n, 2)`` probabilities in ``classes_`` order (the column of ``pos_label_``: fraud)."""
        check_is_fitted(self, "model_")
        return two_columns(self._scores(encode(self.schema, self._features(X))).numpy(), self.classes_,
                           self.pos_label_)

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        """Log-odds of fraud minus those of the threshold: > 0 where :meth:`predict` says fraud (ties aside)."""
        check_is_fitted(self, "model_")
        x = encode(self.schema, self._features(X))
        with frozen_eval(self.model_), torch.no_grad():
            logits = logits_of(ThresholdModel(self.model_, self.threshold_)(x)).double()
        return (logits[:, 1] - logits[:, 0]).numpy()

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """``pos_label_`` (fraud) where P(fraud) >= ``threshold_``, else the other class."""
        check_is_fitted(self, "model_")
        flagged = self._scores(encode(self.schema, self._features(X))).numpy() >= self.threshold_
        return decide(flagged, self.classes_, self.pos_label_)

    # ----------------------------------------------------------------- attacks
    def attack(self, X: pd.DataFrame, budget: float | None = None, steps: int = 50,
               restarts: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Rows of ``X`` moved by PGD towards "not fraud" at the operating threshold, within the schema
        (with an ``estimator``: by :func:`~domains.tabular.trees.tree_attack`; ``steps`` and ``restarts`` unused).

        Returns the adversarial rows (each passes ``schema.validate`` against its original) and per
        row ``cost``, ``changed``, ``repair_failed`` and ``flagged_clean`` / ``flagged_attacked``.
        """
        check_is_fitted(self, "model_")
        original = self._features(X)
        schema: Schema = self.schema
        schema = schema.with_budget(self.budget_ if budget is None else float(budget))
        x = encode(schema, original)
        if self.estimator_ is not None:  # trees: no gradient; the search over their split thresholds
            found = tree_attack(self.estimator_, schema, original, self.threshold_)
            info = found.table[["cost", "changed", "repair_failed"]].copy()
            info["flagged_clean"] = found.table["detected_clean"].to_numpy()
            info["flagged_attacked"] = found.table["p_fraud_adversarial"].to_numpy() >= self.threshold_
            return found.rows, info
        decided = ThresholdModel(self.model_, self.threshold_)
        seed = 0 if self.random_state is None else int(self.random_state)
        result = PGD(SchemaSpace(schema), steps=steps, restarts=restarts, seed=seed)(
            decided, x, torch.ones(len(x), dtype=torch.long))
        rows, info = repair(schema, result.x_adv, x, original)
        info["flagged_clean"] = self._scores(x).numpy() >= self.threshold_
        info["flagged_attacked"] = self._scores(encode(schema, rows)).numpy() >= self.threshold_
        return rows, info

    def evaluate(self, X: pd.DataFrame, y: Any, budget: float | None = None, attack: str = "strongest",
                 steps: int = 50) -> dict[str, Any]:
        """Fraud recall on clean rows and under attack (valid rows only), and the attack success rate.

        Args:
            X, y: rows and labels; only the fraud rows are attacked.
            budget: the attacker's cost budget (default: the one the model was trained with).
            attack: ``"strongest"`` (default) runs :func:`~domains.tabular.attacks.worst_case`, the
                suite ``robustkit harden tabular`` reports: PGD with restarts over two relaxations,
                APGD and a search over category changes. ``"pgd"`` runs :meth:`attack` alone, PGD-``steps``:
                quick, but it overstates robustness, all the more for a model trained against PGD.
                With an ``estimator``, both run :func:`~domains.tabular.trees.tree_attack`.
            steps: PGD steps of ``attack="pgd"``.
        """
        check_is_fitted(self, "model_")
        if attack not in ("strongest", "pgd"):
            raise ConfigError(f"attack must be 'strongest' or 'pgd', not {attack!r}")
        features = self._features(X)
        positive = known_positive(y, len(features), self.classes_, self.pos_label_, "rows")
        fraud = features[positive]
        if attack == "pgd" or self.estimator_ is not None:  # trees: the tree attack is the strongest
            _, info = self.attack(fraud, budget=budget, steps=steps)
            clean, attacked = info["flagged_clean"].to_numpy(), info["flagged_attacked"].to_numpy()
        else:
            schema: Schema = self.schema
            schema = schema.with_budget(self.budget_ if budget is None else float(budget))
            seed = 0 if self.random_state is None else int(self.random_state)
            found = worst_case(ThresholdModel(self.model_, self.threshold_), schema, encode(schema, fraud), fraud,
                               seed=seed).table
            clean = found["detected_clean"].to_numpy(dtype=bool)
            attacked = clean & ~found["fooled"].to_numpy(dtype=bool)
        n = len(clean)
        return {
            "n_fraud": n,
            "budget": self.budget_ if budget is None else float(budget),
            "attack": attack,
            "recall_clean": float(clean.mean()) if n else 0.0,
            "recall_attacked": float(attacked.mean()) if n else 0.0,
            "attack_success_rate": float((clean & ~attacked).sum() / max(1, clean.sum())),
        }
