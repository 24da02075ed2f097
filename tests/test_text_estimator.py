"""RobustSpamClassifier: hardening that holds on held-out spam, valid obfuscations, sklearn behaviour, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import train_test_split

import robustkit as rk
from domains.text import RobustSpamClassifier
from domains.text.data import demo_corpus
from domains.text.obfuscation import words
from robustkit import ConfigError, DataError

TEXTS, LABELS = demo_corpus(400, seed=1)
X_TRAIN, X_TEST, Y_TRAIN, Y_TEST = train_test_split(TEXTS, LABELS, test_size=0.25, stratify=LABELS, random_state=0)


@pytest.fixture(scope="module")
def fitted() -> tuple[RobustSpamClassifier, RobustSpamClassifier]:
    hardened = RobustSpamClassifier(epochs=4).fit(X_TRAIN, Y_TRAIN)
    standard = RobustSpamClassifier(method="standard", epochs=4).fit(X_TRAIN, Y_TRAIN)
    return hardened, standard


def test_hardened_filter_keeps_more_held_out_spam_under_attack(fitted) -> None:
    hard, std = (m.evaluate(X_TEST, Y_TEST) for m in fitted)
    assert hard["n_spam"] == std["n_spam"] == sum(Y_TEST) > 10
    assert hard["recall_clean"] > 0.8 and std["recall_clean"] > 0.8
    assert std["attack_success_rate"] > 0.5  # the attack is real
    assert hard["recall_attacked"] > std["recall_attacked"] + 0.3
    assert hard["budget"] == 3.0 and hard["words_edited"] <= 3.0


def test_attacked_texts_are_valid_obfuscations_judged_by_a_fresh_prediction(fitted) -> None:
    standard = fitted[1]
    spam = [t for t, y in zip(X_TEST, Y_TEST, strict=True) if y == 1]
    adversarial, info = standard.attack(spam)
    assert bool(standard._space().contains(adversarial, spam).all())
    assert (info["words_edited"] <= 3).all() and (info["words_edited"] > 0).any()
    assert np.array_equal(info["flagged_attacked"].to_numpy(), standard.predict(adversarial) == 1)
    assert standard.attack(spam)[0] == adversarial  # the first attack after fit is the same as any later one
    # a share cap bounds the edits of every text, short or long
    capped = clone(standard).set_params(max_edited_share=0.1).fit(X_TRAIN, Y_TRAIN)
    _, capped_info = capped.attack(spam)
    for text, edited in zip(spam, capped_info["words_edited"], strict=True):
        assert edited <= max(1, int(0.1 * len(words(text))))
    assert (capped_info["words_edited"] > 0).any()


def test_string_labels_and_sklearn_cloning() -> None:
    names = np.where(np.asarray(Y_TRAIN[:120]) == 1, "spam", "ham")
    clf = RobustSpamClassifier(method="random-edits", epochs=2, budget=2)
    fitted = clf.fit(X_TRAIN[:120], names)
    assert fitted.classes_.tolist() == ["ham", "spam"]
    assert set(fitted.predict(TEXTS[:10]).tolist()) <= {"ham", "spam"}
    assert clone(clf).get_params() == clf.get_params() and not hasattr(clone(clf), "model_")


def test_core_methods_train_through_the_embedding_ball() -> None:
    method = rk.methods.PGDTraining(steps=2)
    clf = RobustSpamClassifier(method=method, epochs=1).fit(X_TRAIN[:120], Y_TRAIN[:120])
    assert len(clf.history_) == 1 and np.isfinite(clf.history_["train_loss"]).all()
    assert "val_robust_accuracy" in clf.history_  # validated under the embedding ball it trained against
    assert clf.get_params()["method"] is method  # fit leaves its parameters as given (scikit-learn's rule)


def test_unfitted_use_and_bad_evaluation_labels_are_refused(fitted) -> None:
    with pytest.raises(NotFittedError):
        RobustSpamClassifier().predict(X_TEST)
    standard = fitted[1]
    column = np.asarray(Y_TEST).reshape(-1, 1)
    assert standard.evaluate(X_TEST, column) == standard.evaluate(X_TEST, Y_TEST)
    with pytest.raises(DataError, match="not fitted on"):
        standard.evaluate(X_TEST, np.where(np.asarray(Y_TEST) == 1, "spam", "ham"))
    with pytest.raises(DataError, match="one label per text"):
        standard.evaluate(X_TEST, Y_TEST[:5])


def test_random_state_none_draws_a_seed() -> None:
    clf = RobustSpamClassifier(method="standard", epochs=1, random_state=None).fit(X_TRAIN[:80], Y_TRAIN[:80])
    assert clf.predict(X_TEST[:3]).shape == (3,)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"method": "sgd"}, "method"),
        ({"epochs": 0}, "epochs"),
        ({"budget": 0}, "budget"),
        ({"target_fpr": 1.5}, "target_fpr"),
        ({"attack_tricks": "leet"}, "attack_tricks"),
        ({"attack_tricks": ["rot13"]}, "attack_tricks"),
        ({"max_edited_share": 2.0}, "max_edited_share"),
        ({"random_state": "seven"}, "random_state"),
    ],
)
def test_bad_parameters_are_refused_before_training(params, match) -> None:
    clf = RobustSpamClassifier(**params)
    with pytest.raises(ConfigError, match=match):
        clf.fit(X_TRAIN[:60], Y_TRAIN[:60])
    assert not hasattr(clf, "model_")


@pytest.mark.parametrize(
    ("texts", "labels", "match"),
    [
        ("one long string", [1], "list"),
        ([*X_TRAIN[:59], 5], Y_TRAIN[:60], "not strings"),
        ([*X_TRAIN[:59], "   "], Y_TRAIN[:60], "empty"),
        (X_TRAIN[:60], Y_TRAIN[:50], "50"),
        (X_TRAIN[:60], [1] * 60, "binary"),
        (X_TRAIN[:60], [1] + [0] * 59, "at least 2"),
        (X_TRAIN[:60], [0, 0] + [1] * 58, "holds none out"),
    ],
)
def test_bad_data_is_refused_before_training(texts, labels, match) -> None:
    clf = RobustSpamClassifier(epochs=1)
    with pytest.raises(DataError, match=match):
        clf.fit(texts, labels)
    assert not hasattr(clf, "model_")


def test_positive_label_is_named_or_refused_and_no_training_text_is_kept() -> None:
    import pickle

    flipped = np.where(np.asarray(Y_TRAIN[:120]) == 1, "junk", "mail")  # "mail" sorts last but is not spam
    with pytest.raises(DataError, match=r"'junk' and 'mail'.*pos_label"):
        RobustSpamClassifier(epochs=1).fit(X_TRAIN[:120], flipped)
    clf = RobustSpamClassifier(method="standard", epochs=2, pos_label="junk").fit(X_TRAIN[:120], flipped)
    assert clf.classes_.tolist() == ["junk", "mail"] and clf.pos_label_ == "junk"
    proba = clf.predict_proba(X_TEST[:20])
    assert ((clf.predict(X_TEST[:20]) == "junk") == (proba[:, 0] >= clf.threshold_)).all()
    spam = [t for t, y in zip(X_TEST, Y_TEST, strict=True) if y == 1]
    assert clf.evaluate(X_TEST, np.where(np.asarray(Y_TEST) == 1, "junk", "mail"))["n_spam"] == len(spam)
    blob = pickle.dumps(clf)
    assert not any(t.encode() in blob for t in X_TRAIN[:120] if len(t) > 30)  # a digest, not the messages
