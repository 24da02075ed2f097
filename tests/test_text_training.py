"""Text spam: the defensive normaliser, discrete adversarial training and its random-edits control."""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import robustkit as rk
from domains.text import TextDataset, TextDomain, TextOptions
from domains.text.adversarial import DiscreteAdversarialTraining, RandomEditsTraining
from domains.text.model import encode_ids
from domains.text.normalise import normalise, normalise_aligned
from domains.text.obfuscation import HOMOGLYPHS, TRICKS, ObfuscationSpace, fold, is_payload, words
from robustkit.cli import main

INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"]
CONTEXT = "hi {} call 09061234567 for £500 at www.win-prize.com now"
#: the tricks the normaliser does not fold: what an adaptive attacker uses against it
ADAPTIVE = ["leet", "insert", "swap", "delete"]


# ----------------------------------------------------------------------------- the normaliser
@st.composite
def obfuscated_word(draw: st.DrawFn) -> tuple[str, str]:
    """A word and a version of it with homoglyphs, invisible characters and separators mixed in."""
    word = draw(st.text(alphabet=string.ascii_letters, min_size=2, max_size=12))
    glyphs = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    invisible = draw(st.lists(st.sampled_from([None, *INVISIBLE]), min_size=len(word), max_size=len(word)))
    sep = draw(st.sampled_from(["", ".", "-", "*", "_", *([" "] if len(word) >= 4 else [])]))
    pieces = [
        (HOMOGLYPHS.get(ch, ch) if glyph else ch) + (mark or "")
        for ch, glyph, mark in zip(word, glyphs, invisible, strict=True)
    ]
    return word, sep.join(pieces)


@given(obfuscated_word())
def test_normaliser_undoes_homoglyph_invisible_and_separator_tricks(pair: tuple[str, str]) -> None:
    word, obfuscated = pair
    assert normalise(obfuscated) == word
    text = CONTEXT.format(obfuscated)
    assert normalise(text) == CONTEXT.format(word)
    assert normalise(normalise(text)) == normalise(text)
    # every character of the result is traced back to the word it came from
    out, owners = normalise_aligned(text)
    n_words = len(words(text))
    assert len(owners) == len(out) and all(-1 <= k < n_words for k in owners)
    assert [ch for ch, k in zip(out, owners, strict=True) if k == 0] == list("hi")
    assert {k for ch, k in zip(out, owners, strict=True) if ch == "£"} == {n_words - 4}


_token = st.one_of(
    st.from_regex(r"[0-9]{1,11}", fullmatch=True),
    st.from_regex(r"[£$€][0-9]{1,4}(\.[0-9]{2})?", fullmatch=True),
    st.from_regex(r"[0-9]{3,4}-[0-9]{3}-[0-9]{4}|[0-9]{1,2}%|[0-9]\.[0-9]", fullmatch=True),
    st.from_regex(r"www\.[a-z]{2,8}(-[a-z]{2,8})?\.(com|net|co\.uk)", fullmatch=True),
    st.from_regex(r"[a-z]{0,4}[0-9][a-z0-9]{0,5}", fullmatch=True),  # leetspeak and codes: never folded
    st.from_regex(r"[A-Za-z]{2,9}[!?.,]?", fullmatch=True),
)


@given(st.lists(_token, min_size=1, max_size=8))
def test_normaliser_leaves_digits_prices_urls_and_leetspeak_alone(tokens: list[str]) -> None:
    text = " ".join(tokens)
    assert normalise(text) == text


def test_normaliser_examples() -> None:
    assert normalise("F R E E entry, u r a star") == "FREE entry, u r a star"  # 3 spaced letters are SMS shorthand
    assert normalise("ｗｉｎ a ｃａｓｈ prize") == "win a cash prize"  # NFKC: full-width letters
    assert normalise("Привет, how are you") == "Привет, how are you"  # real Cyrillic words stay
    assert normalise("fr33 c4sh, call 0906 123 4567, 3.5% off, e-mail x-ray") == (
        "fr33 c4sh, call 0906 123 4567, 3.5% off, e-mail x-ray"
    )


# ----------------------------------------------------------------------------- the domain option
def test_normalise_option_reaches_every_text_the_model_reads(tmp_path: Path) -> None:
    domain = TextDomain()
    data = domain.load_data("demo:100", seed=0, options=TextOptions(normalise=True))
    train = data.train
    assert isinstance(train, TextDataset)
    assert train.ids == encode_ids(train.tokenizer, [normalise(t) for t in train.texts])
    spam = next(t for t, y in zip(train.texts, train.labels, strict=True) if y == 1)
    space = domain.eval_space(3, data)
    assert isinstance(space, ObfuscationSpace) and space.normaliser is not None
    # homoglyphs, and separators between every letter (the normaliser leaves partial separators alone)
    full = re.compile(r"(\w[.*_-])+\w")
    tricked = [space.apply(spam, e) for e in space.candidates(spam, spam)
               if e.value[1] == "homoglyph" or (e.value[1] == "separators" and full.fullmatch(e.value[3]))]
    assert tricked and bool(space.contains(tricked, [spam] * len(tricked)).all())
    assert torch.equal(space.encode(tricked), space.encode([spam] * len(tricked)))
    # the model's spec records it, so evaluating a saved model normalises too
    spec = domain.model_spec(data, TextOptions(normalise=True))
    assert spec["normalise"] is True
    domain.save_model(domain.build_model(spec), tmp_path / "m", spec)
    loader = TextDomain()
    loaded, _ = loader.load_model(tmp_path / "m")
    again = loader.load_data("demo:100", seed=0, options=TextOptions())
    reloaded = loader.eval_space(3, again, loaded)
    assert isinstance(reloaded, ObfuscationSpace) and reloaded.normaliser is not None
    # without the option the tricks reach the model
    plain = TextDomain()
    raw = plain.eval_space(3, plain.load_data("demo:100", seed=0, options=TextOptions()))
    assert isinstance(raw, ObfuscationSpace) and raw.normaliser is None
    assert not torch.equal(raw.encode(tricked[:1]), raw.encode([spam]))
    with pytest.raises(rk.ConfigError, match="normalise"):
        TextDomain().load_data("demo:40", seed=0, options=TextOptions(normalise='yes'))


def test_attack_trick_subset() -> None:
    domain = TextDomain()
    data = domain.load_data("demo:60", seed=0, options=TextOptions(attack_tricks=ADAPTIVE))
    space = domain.eval_space(3, data)
    assert isinstance(space, ObfuscationSpace) and space.tricks == set(ADAPTIVE)
    spam = next(t for t, y in zip(data.test.texts, data.test.labels, strict=True) if y == 1)  # type: ignore[attr-defined]
    kinds = {e.value[1] for e in space.candidates(spam, spam)}
    assert kinds and kinds <= set(ADAPTIVE)
    full = domain.eval_space(3, domain.load_data("demo:60", 0, TextOptions()))
    assert isinstance(full, ObfuscationSpace) and {e.value[1] for e in full.candidates(spam, spam)} == set(TRICKS)
    with pytest.raises(rk.ConfigError, match="trick"):
        ObfuscationSpace(space.tokenizer, space.dim, 3, tricks=["rot13"])
    for bad in ("leet", ["rot13"]):
        with pytest.raises(rk.ConfigError, match="attack_tricks"):
            domain.load_data("demo:60", seed=0, options=TextOptions(attack_tricks=bad))


# ----------------------------------------------------------------------------- discrete adversarial training
SEED, N, EPOCHS, BUDGET = 1, 500, 5, 3


class HamWatch(rk.training.Callback):
    """Checks, before every epoch (after the method swapped its data in), that no ham text was changed."""

    def __init__(self, dataset: TextDataset) -> None:
        self.dataset = dataset
        self.ham = {i: list(ids) for i, (ids, y) in enumerate(zip(dataset.ids, dataset.labels, strict=True)) if y == 0}
        self.epochs_checked = 0

    def on_epoch_start(self, trainer: Any) -> None:
        assert all(self.dataset.ids[i] == ids for i, ids in self.ham.items())
        self.epochs_checked += 1


@dataclass
class Trained:
    domain: TextDomain
    data: rk.DomainData
    models: dict[str, nn.Module]
    methods: dict[str, DiscreteAdversarialTraining]


@pytest.fixture(scope="module")
def trained() -> Trained:
    """Standard, discrete and random-edits training on the same demo split and budget."""
    domain = TextDomain()
    data = domain.load_data(f"demo:{N}", seed=SEED, options=TextOptions())
    train = data.train
    assert isinstance(train, TextDataset)
    clean = [list(i) for i in train.ids]
    models: dict[str, nn.Module] = {}
    methods: dict[str, DiscreteAdversarialTraining] = {}
    for name in ("standard", "discrete", "random-edits"):
        torch.manual_seed(SEED)
        model = domain.build_model(domain.model_spec(data, TextOptions()))
        method: Any = name
        watch = HamWatch(train)
        if name != "standard":
            method = methods[name] = domain.training_method(name, data, BUDGET)  # type: ignore[assignment]
        trainer = rk.AdversarialTrainer(
            model, domain.space(BUDGET, data), method=method, optimizer=torch.optim.Adam(model.parameters(), lr=3e-3),
            callbacks=[watch], seed=SEED,
        )
        history = trainer.fit(domain.loader(train, 32, shuffle=True), epochs=EPOCHS)
        assert watch.epochs_checked == EPOCHS and train.ids == clean  # clean data is back after training
        if name != "standard":
            assert list(history["train_attack_success"].notna()) == [False] + [True] * (EPOCHS - 1)
        models[name] = model.eval()
    assert isinstance(methods["discrete"], DiscreteAdversarialTraining)
    assert isinstance(methods["random-edits"], RandomEditsTraining)
    return Trained(domain, data, models, methods)


def spam_recall_under_attack(t: Trained, name: str, threshold: float | None = None) -> tuple[float, float]:
    """Spam recall on the held-out demo spam, clean and under the obfuscation search (budget 3)."""
    model = t.models[name]
    threshold = t.domain.choose_threshold(model, t.data) if threshold is None else threshold
    decided = t.domain.decided(model, threshold)
    test = t.data.test
    assert isinstance(test, TextDataset)
    spam = [x for x, y in zip(test.texts, test.labels, strict=True) if y == 1]
    space = t.domain.eval_space(BUDGET, t.data, decided)
    assert isinstance(space, ObfuscationSpace)
    with torch.no_grad():
        clean = float((decided(space.encode(spam)).argmax(1) == 1).float().mean())
    result = rk.DiscreteSearch(space, candidates_per_step=8)(decided, spam, torch.ones(len(spam), dtype=torch.long))
    return clean, 1.0 - float(result.success.float().mean())


def test_discrete_training_beats_random_edits_with_the_same_budget(trained: Trained) -> None:
    # at the models' own decision (argmax): the operating threshold, set by the top one or two of about
    # 70 validation ham scores, moves too much between runs for a fair comparison on 30 test spam
    _, discrete = spam_recall_under_attack(trained, "discrete", 0.5)
    _, random_edits = spam_recall_under_attack(trained, "random-edits", 0.5)
    assert discrete > random_edits, (discrete, random_edits)


def test_hardened_model_keeps_more_spam_recall_than_standard(trained: Trained) -> None:
    clean_std, standard = spam_recall_under_attack(trained, "standard")
    clean_hard, hardened = spam_recall_under_attack(trained, "discrete")
    assert hardened > standard and clean_hard >= 0.8, (clean_std, standard, clean_hard, hardened)


def test_gradient_scores_with_the_normaliser_rank_better_than_chance(trained: Trained) -> None:
    """With a normaliser the model reads other characters than the attacker writes: the scores must map
    the gradients back to the right words (and see that folded tricks change nothing)."""
    model = trained.models["standard"]
    decided = trained.domain.decided(model, 0.5)
    plain = trained.domain.eval_space(1, trained.data, decided)
    assert isinstance(plain, ObfuscationSpace)
    space = ObfuscationSpace(plain.tokenizer, plain.dim, 1, embedding=plain.embedding, normaliser=normalise_aligned)
    test = trained.data.test
    assert isinstance(test, TextDataset)
    better = 0
    spam = [x for x, y in zip(test.texts, test.labels, strict=True) if y == 1]
    for text in spam:
        text = text.replace(" ", " ​", 1)  # a folded trick already in the text shifts the characters
        x = space.encode([text]).requires_grad_(True)
        (grad,) = torch.autograd.grad(nn.functional.cross_entropy(decided(x), torch.tensor([1])), x)
        edits = space.candidates(text, text)
        scores = space.scores(text, grad[0], edits)
        with torch.no_grad():
            losses = nn.functional.cross_entropy(
                decided(space.encode([space.apply(text, e) for e in edits])),
                torch.ones(len(edits), dtype=torch.long),
                reduction="none",
            )
        better += float(losses[scores.topk(5).indices].mean()) > float(losses.mean())
    assert better >= 0.9 * len(spam), (better, len(spam))  # 19 of 30 with owners mapped to the wrong words


def payload(text: str) -> list[str]:
    """The payload as a person reads it: invisible characters, homoglyphs and separators folded."""
    return sorted(
        fold(w, leet=False)
        for w in words(text)
        if is_payload(fold(w, leet=False, separators=False)) or is_payload(fold(w, leet=False))
    )


@pytest.mark.parametrize("name", ["discrete", "random-edits"])
def test_adversarial_training_texts_are_spam_within_budget_with_payload_intact(trained: Trained, name: str) -> None:
    method = trained.methods[name]
    train = trained.data.train
    assert isinstance(train, TextDataset)
    spam = {x for x, y in zip(train.texts, train.labels, strict=True) if y == 1}
    assert len(method.generated) == len(method.sources) == len(spam) and set(method.sources) == spam
    assert bool(method.space.contains(method.generated, method.sources).all())
    assert sum(a != o for a, o in zip(method.generated, method.sources, strict=True)) > len(spam) // 2
    for adv, orig in zip(method.generated, method.sources, strict=True):
        kept = Counter(payload(adv))
        kept.subtract(payload(orig))
        assert min(kept.values(), default=0) >= 0, (orig, adv)


def test_discrete_method_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    common = ["--data", "demo:150", "--epochs", "2", "--preset", "quick", "--threads", "1", "--quiet"]
    assert main(["harden", "text", "--method", "discrete", "--out", str(out), *common]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "discrete" and "method: discrete" in (out / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["harden", "text", "--method", "nope", "--out", str(tmp_path / "bad"), *common]) == 2
    assert "random-edits" in capsys.readouterr().err and not (tmp_path / "bad").exists()
