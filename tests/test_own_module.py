"""module=: a user's own torch module trains through both estimators, its adversarial examples stay valid,
it saves and loads with the same module, and a module that breaks the contract is refused before training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from domains.tabular.estimator import RobustTabularClassifier
from domains.tabular.synthetic import card_schema, generate
from domains.text import RobustSpamClassifier
from domains.text.data import demo_corpus
from robustkit.errors import ConfigError, ModelError

SCHEMA = card_schema()
DF = generate(600, seed=3, fraud_rate=0.2)
X, Y = DF.drop(columns="is_fraud"), DF["is_fraud"]
FRAUD = X[Y.to_numpy() == 1].head(20)
TEXTS, LABELS = demo_corpus(200, seed=2)
SPAM = [t for t, y in zip(TEXTS, LABELS, strict=True) if y][:8]


def head(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, 16), nn.ReLU(), nn.Linear(16, 2))


class MeanPool(nn.Module):
    """A text head: the mean of the token embeddings, then a linear layer."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out = nn.Linear(dim, 2)

    def forward(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(emb.sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp_min(1))
        return out


def test_a_tabular_module_trains_attacks_validly_and_round_trips(tmp_path: Path) -> None:
    clf = RobustTabularClassifier(SCHEMA, method="pgd", epochs=3, module=head).fit(X, Y)
    assert clf.get_params()["module"] is head and isinstance(clf.model_[1], nn.Sequential)
    loss = clf.history_["train_loss"]
    assert np.isfinite(loss).all() and loss.iloc[-1] < loss.iloc[0]
    assert roc_auc_score(Y, clf.predict_proba(X)[:, 1]) > 0.9  # it learned fraud
    rows, info = clf.attack(FRAUD, steps=10)
    assert SCHEMA.validate(rows, FRAUD).all() and (info["cost"] <= SCHEMA.budget + 1e-6).all()
    assert np.array_equal(info["flagged_attacked"].to_numpy(), clf.predict(rows) == 1)
    assert (info["flagged_clean"] & ~info["flagged_attacked"]).any()  # the attack is real on this module

    again = RobustTabularClassifier.load(clf.save(tmp_path / "clf"), module=head)
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    with pytest.raises(ModelError, match="pass the same one again"):
        RobustTabularClassifier.load(tmp_path / "clf")


def test_a_module_instance_is_trained_as_a_copy() -> None:
    width = RobustTabularClassifier(SCHEMA, epochs=1, module=head).fit(X, Y).model_[1][0].in_features
    given = nn.Linear(width, 2)
    before = {k: v.clone() for k, v in given.state_dict().items()}
    clf = RobustTabularClassifier(SCHEMA, method="standard", epochs=1, module=given).fit(X, Y)
    assert clf.module is given and clf.model_[1] is not given
    assert all(torch.equal(v, before[k]) for k, v in given.state_dict().items())
    assert not torch.equal(clf.model_[1].weight, before["weight"])


@pytest.mark.parametrize(("module", "error", "match"), [
    (lambda w: nn.Linear(w, 3), ModelError, r"shape \(2, 3\).*\(N, 2\) logits"),
    (lambda w: nn.Linear(w + 1, 2), ModelError, r"failed on a batch.*float tensor \(N, 18\)"),
    (lambda w: nn.Identity(), ConfigError, "no trainable parameters"),
    (lambda w: "a model", ConfigError, "not a torch.nn.Module"),
    ("mlp", ConfigError, "module must be a torch.nn.Module"),
])
def test_a_tabular_module_that_breaks_the_contract_is_refused_before_training(module: Any, error: type,
                                                                              match: str) -> None:
    clf = RobustTabularClassifier(SCHEMA, epochs=1, module=module)
    with pytest.raises(error, match=match):
        clf.fit(X, Y)
    assert not hasattr(clf, "model_")


def test_a_text_head_trains_attacks_validly_and_round_trips(tmp_path: Path) -> None:
    clf = RobustSpamClassifier(method="standard", epochs=3, lr=1e-2, module=MeanPool).fit(TEXTS, LABELS)
    assert isinstance(clf.model_.head, MeanPool) and np.isfinite(clf.history_["train_loss"]).all()
    assert roc_auc_score(LABELS, clf.predict_proba(TEXTS)[:, 1]) > 0.9
    adversarial, info = clf.attack(SPAM, budget=2)
    assert bool(clf._space(2).contains(adversarial, SPAM).all()) and (info["words_edited"] <= 2).all()
    assert np.array_equal(info["flagged_attacked"].to_numpy(), clf.predict(adversarial) == 1)
    assert (info["flagged_clean"] & ~info["flagged_attacked"]).any()

    again = RobustSpamClassifier.load(clf.save(tmp_path / "filter"), module=MeanPool)
    np.testing.assert_array_equal(again.predict_proba(TEXTS), clf.predict_proba(TEXTS))
    with pytest.raises(ConfigError, match="without module"):
        RobustSpamClassifier.load(
            RobustSpamClassifier(method="standard", epochs=1).fit(TEXTS, LABELS).save(tmp_path / "cnn"),
            module=MeanPool)


def test_a_text_head_that_takes_one_argument_is_refused_before_training() -> None:
    clf = RobustSpamClassifier(epochs=1, module=lambda dim: nn.Linear(dim, 2))
    with pytest.raises(ModelError, match=r"failed on a batch.*module\(embeddings, mask\)"):
        clf.fit(TEXTS, LABELS)
    assert not hasattr(clf, "model_")
