"""RobustSpamClassifier.save / load: the same probabilities, decisions and attacks after a round trip, and a
folder that was changed, left incomplete or pickled is refused before anything is built."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

import robustkit as rk
from domains.text import RobustSpamClassifier
from domains.text.data import demo_corpus
from robustkit.errors import ModelError
from tests.test_no_pickles import Tripwire
from tests.test_tabular_persistence import rewrite_listed_digest

TEXTS, LABELS = demo_corpus(200, seed=2)
NAMED = ["junk" if y else "ok" for y in LABELS]
SPAM = [t for t, y in zip(TEXTS, LABELS, strict=True) if y][:4]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[RobustSpamClassifier, Path]:
    clf = RobustSpamClassifier(method=rk.methods.PGDTraining(steps=1), epochs=3, lr=1e-2, normalise=True,
                               pos_label="junk", attack_tricks=["leet", "insert", "swap"], max_edited_share=0.5,
                               budget=2).fit(TEXTS, NAMED)
    return clf, clf.save(tmp_path_factory.mktemp("text") / "filter")


def test_the_loaded_filter_predicts_and_is_attacked_as_the_saved_one(saved) -> None:
    clf, folder = saved
    assert {p.name for p in folder.iterdir()} == {"classifier.json", "model.safetensors", "tokenizer.json"}
    again = RobustSpamClassifier.load(folder)
    np.testing.assert_array_equal(again.predict_proba(TEXTS), clf.predict_proba(TEXTS))
    np.testing.assert_array_equal(again.predict(TEXTS), clf.predict(TEXTS))
    assert (again.threshold_, again.pos_label_, again.classes_.tolist()) == (clf.threshold_, "junk", ["junk", "ok"])
    assert again.get_params(deep=False).keys() == clf.get_params(deep=False).keys()
    assert again.method.config() == clf.method.config() and again.attack_tricks == ["leet", "insert", "swap"]
    # the evaluation space comes back too: tokenizer, normaliser, tricks and share cap
    (texts, info), (texts_before, info_before) = again.attack(SPAM), clf.attack(SPAM)
    assert texts == texts_before and info.equals(info_before) and texts != SPAM
    assert again.history_.equals(clf.history_)


def copy_of(folder: Path, to: Path) -> Path:
    to.mkdir()
    for p in folder.iterdir():
        (to / p.name).write_bytes(p.read_bytes())
    return to


def test_a_changed_incomplete_or_pickled_folder_is_refused(saved, tmp_path: Path) -> None:
    folder = saved[1]
    changed = copy_of(folder, tmp_path / "changed")
    vocab = json.loads((changed / "tokenizer.json").read_text())
    vocab["model"]["vocab"]["spam"] = len(vocab["model"]["vocab"])  # one token more
    (changed / "tokenizer.json").write_text(json.dumps(vocab))
    with pytest.raises(ModelError, match="changed after it was saved"):
        RobustSpamClassifier.load(changed)
    rewrite_listed_digest(changed, "tokenizer.json")  # the digest updated too: the vocabulary no longer fits
    with pytest.raises(ModelError, match="do not belong together"):
        RobustSpamClassifier.load(changed)

    incomplete = copy_of(folder, tmp_path / "incomplete")
    (incomplete / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"not those classifier\.json lists"):
        RobustSpamClassifier.load(incomplete)

    proof = tmp_path / "proof"
    (tmp_path / "filter.pkl").write_bytes(pickle.dumps(Tripwire(proof)))
    with pytest.raises(ModelError, match="pickle"):
        RobustSpamClassifier.load(tmp_path / "filter.pkl")
    assert not proof.exists()

    tabular = copy_of(folder, tmp_path / "other")
    meta = json.loads((tabular / "classifier.json").read_text())
    meta["format"] = "robustkit.tabular.RobustTabularClassifier"
    (tabular / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="not a version-1 RobustSpamClassifier"):
        RobustSpamClassifier.load(tabular)
