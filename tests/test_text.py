"""The text spam domain: data, the built-in model, the obfuscation space, and harden end to end."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

import robustkit as rk
from domains.text import TextCNN, TextDataset, TextDomain, TextOptions
from domains.text.data import demo_corpus, read_sms_collection
from domains.text.model import TokenL2Ball
from domains.text.obfuscation import ObfuscationSpace, edit_cost, fold, is_payload, words
from robustkit.cli import main

Trained = tuple[TextDomain, rk.DomainData, TextCNN]


@pytest.fixture(scope="module")
def trained() -> Trained:
    torch.manual_seed(0)
    domain = TextDomain()
    data = domain.load_data("demo:400", seed=0, options=TextOptions())
    model = domain.build_model(domain.model_spec(data, TextOptions()))
    assert isinstance(model, TextCNN)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    trainer = rk.AdversarialTrainer(model, domain.space(3, data), method="standard", optimizer=opt)
    trainer.fit(domain.loader(data.train, 32, shuffle=True), epochs=4)
    return domain, data, model.eval()


def splits(data: rk.DomainData) -> tuple[TextDataset, TextDataset, TextDataset]:
    assert isinstance(data.train, TextDataset) and isinstance(data.val, TextDataset)
    assert isinstance(data.test, TextDataset)
    return data.train, data.val, data.test


def payload(text: str) -> list[str]:
    """The payload as a person reads it: invisible characters, homoglyphs and separators folded (a URL is
    recognised with its dots, a call to action like "t.e.x.t" without them)."""
    return sorted(fold(w, leet=False) for w in words(text)
                  if is_payload(fold(w, leet=False, separators=False)) or is_payload(fold(w, leet=False)))


def test_demo_corpus_is_seeded_distinct_and_has_both_classes() -> None:
    texts, labels = demo_corpus(300, seed=1)
    assert (texts, labels) == demo_corpus(300, seed=1)
    assert len(set(texts)) == len(texts) == 300
    assert 0.2 < sum(labels) / len(labels) < 0.4
    spam = [t for t, y in zip(texts, labels, strict=True) if y == 1]
    assert all(any(is_payload(w) for w in words(t)) for t in spam)


def test_split_is_stratified_and_padding_is_dynamic() -> None:
    domain = TextDomain()
    data = domain.load_data("demo:200", seed=0, options=TextOptions())
    train, val, test = splits(data)
    assert (len(train), len(val), len(test)) == (120, 40, 40)
    for part in (train, val, test):
        share = sum(part.labels) / len(part)
        assert 0.2 < share < 0.4
    x, _ = next(iter(domain.loader(data.train, 8, shuffle=False)))
    longest = max(len(i) for i in train.ids[:8])
    assert x.shape == (8, longest, 33) and bool((x[..., 1:] == 0).all())
    texts, _ = next(iter(domain.loader(data.test, 4, shuffle=False)))
    assert isinstance(texts[0], str)


def test_sms_reader_deduplicates(tmp_path: Path) -> None:
    file = tmp_path / "SMSSpamCollection"
    file.write_text("ham\thi there\nspam\tWIN cash now call 09061234567\nham\thi there\n", encoding="utf-8")
    texts, labels, sha = read_sms_collection(file)
    assert labels == [0, 1, 0] and len(sha) == 64
    from domains.text.data import deduplicate

    assert deduplicate(texts, labels)[2] == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [("ham\t   \n", "whitespace"), ("junk\thello\n", "unknown label"), ("ham hello\n", "no tab")],
)
def test_bad_input_is_a_data_error(tmp_path: Path, content: str, message: str) -> None:
    file = tmp_path / "SMSSpamCollection"
    file.write_text(content, encoding="utf-8")
    with pytest.raises(rk.DataError, match=message):
        TextDomain().load_data(f"sms:{file}", seed=0, options=TextOptions())


def test_undecodable_file_is_a_data_error(tmp_path: Path) -> None:
    file = tmp_path / "SMSSpamCollection"
    file.write_bytes(b"ham\t\xff\xfe hello\n")
    with pytest.raises(rk.DataError, match="UTF-8"):
        read_sms_collection(file)


def test_shared_sms_collection() -> None:
    root = os.environ.get("ROBUSTKIT_DATA")
    if not root:
        pytest.skip("ROBUSTKIT_DATA is not set: the SMS Spam Collection test needs the shared data")
    path = Path(root) / "sms_spam_collection" / "SMSSpamCollection"
    texts, _, _ = read_sms_collection(path)
    assert len(texts) == 5574 and len(set(texts)) == 5574 - 403
    data = TextDomain().load_data(f"sms:{path}", seed=0, options=TextOptions())
    assert sum(len(p) for p in splits(data)) == 5574 - 403


def test_edit_cost_and_payload_rules() -> None:
    text = "WINNER! claim your prize at www.win-prize.com or call 09061234567 for £500 now"
    assert edit_cost(text, text) == 0
    glyphed = text.replace("WINNER", "WINN\u0415R").replace("prize at", "pr1ze at")
    assert edit_cost(text, glyphed) == 2
    assert edit_cost(text, "thanks " + text) == 1
    # the payload may be obfuscated invisibly or with homoglyphs, never deleted or replaced
    assert edit_cost(text, text.replace("claim", "cl\u0430im")) == 1
    assert edit_cost(text, text.replace("claim", "c.l.a.i.m")) == 1
    assert edit_cost(text, text.replace("09061234567", "0906123456")) == float("inf")
    assert edit_cost(text, text.replace("£500", "£5OO")) == float("inf")
    assert edit_cost(text, text.replace("www.win-prize.com ", "")) == float("inf")
    assert edit_cost(text, text.replace("claim", "grab")) == float("inf")
    assert edit_cost(text, text.replace("prize", "banana")) == float("inf")


def test_embedding_space_freezes_ids_and_limits_each_token() -> None:
    space = TokenL2Ball(eps=0.5, dim=4)
    x = torch.zeros(2, 3, 5)
    x[..., 0] = torch.tensor([[5.0, 6.0, 0.0], [7.0, 0.0, 0.0]])
    moved = space.project(x + torch.randn(2, 3, 5) * 3, x)
    assert torch.equal(moved[..., 0], x[..., 0])
    assert bool((moved[..., 1:].norm(dim=-1) <= 0.5 + 1e-5).all())
    assert bool(space.contains(moved, x).all()) and bool(space.contains(space.init(x, seed=1), x).all())


def test_attack_is_within_budget_with_payload_intact(trained: Trained) -> None:
    domain, data, model = trained
    decided = domain.decided(model, domain.choose_threshold(model, data))
    space = domain.eval_space(3, data, decided)
    assert isinstance(space, ObfuscationSpace) and space.embedding is not None
    assert domain.eval_space(3, data).embedding is None  # nothing is bound unless the model is given
    spam = [t for t, y in zip(splits(data)[2].texts, splits(data)[2].labels, strict=True) if y == 1]
    result = rk.DiscreteSearch(space, candidates_per_step=4)(decided, spam, torch.ones(len(spam), dtype=torch.long))
    assert bool(space.contains(result.x_adv, spam).all())
    changed = 0
    for orig, adv in zip(spam, result.x_adv, strict=True):
        assert isinstance(adv, str) and edit_cost(orig, adv) <= 3
        kept = Counter(payload(adv))
        kept.subtract(payload(orig))
        assert payload(orig) and min(kept.values()) >= 0, (orig, adv)
        changed += adv != orig
    assert changed > 0
    # success is what a fresh prediction on the returned strings says
    with torch.no_grad():
        fresh = decided(space.encode(result.x_adv)).argmax(dim=1)
    assert torch.equal(fresh != 1, result.success)


def test_edits_capped_by_share_of_the_text(trained: Trained) -> None:
    domain, data, model = trained
    capped = TextDomain()
    plumbed = capped.eval_space(6, capped.load_data("demo:40", seed=0, options=TextOptions(max_edited_share=0.2)))
    assert isinstance(plumbed, ObfuscationSpace) and plumbed.max_share == 0.2
    space = ObfuscationSpace(data.raw["tokenizer"], int(data.raw["dim"]), 6, max_share=0.2)
    spam = [t for t, y in zip(splits(data)[2].texts, splits(data)[2].labels, strict=True) if y == 1]
    short = "call 09061234567 now"
    assert space.limit(short) == 1 and space.limit(" ".join(["prize"] * 100)) == 6
    decided = domain.decided(model, domain.choose_threshold(model, data))
    texts = [short, *spam]
    result = rk.DiscreteSearch(space, candidates_per_step=4)(decided, texts, torch.ones(len(texts), dtype=torch.long))
    assert bool(space.contains(result.x_adv, texts).all())
    for orig, adv in zip(texts, result.x_adv, strict=True):
        assert edit_cost(orig, adv) <= max(1, int(0.2 * len(words(orig))))
    # greedy edits stop exactly at the cap, and one more edit is outside the space
    edited = short
    while edits := space.candidates(edited, short):
        edited = space.apply(edited, edits[0])
    assert edit_cost(short, edited) == 1 and bool(space.contains([edited], [short]).all())
    assert not bool(space.contains(["thanks " + edited], [short]).all())
    for bad in (0, 1.5, True, "0.2"):
        with pytest.raises(rk.ConfigError, match="max_edited_share"):
            TextDomain().load_data("demo:40", seed=0, options=TextOptions(max_edited_share=bad))
    for bad_share in (0.0, "x"):
        with pytest.raises(rk.ConfigError, match="max_share"):
            ObfuscationSpace(space.tokenizer, space.dim, 3, max_share=bad_share)  # type: ignore[arg-type]


def test_gradient_scores_rank_better_than_chance(trained: Trained) -> None:
    domain, data, model = trained
    decided = domain.decided(model, 0.5)
    space = domain.eval_space(1, data, decided)
    assert isinstance(space, ObfuscationSpace)
    text = next(t for t, y in zip(splits(data)[2].texts, splits(data)[2].labels, strict=True) if y == 1)
    x = space.encode([text]).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(decided(x), torch.tensor([1]))
    (grad,) = torch.autograd.grad(loss, x)
    edits = space.candidates(text, text)
    scores = space.scores(text, grad[0], edits)
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(
            decided(space.encode([space.apply(text, e) for e in edits])),
            torch.ones(len(edits), dtype=torch.long),
            reduction="none",
        )
    top = losses[scores.topk(5).indices].mean()
    assert float(top) >= float(losses.mean())


def test_save_and_load_keep_logits_and_tokenizer(trained: Trained, tmp_path: Path) -> None:
    domain, data, model = trained
    spec = domain.model_spec(data, TextOptions())
    domain.save_model(model, tmp_path / "m", spec, 0.4)
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"model.safetensors", "model.json", "tokenizer.json"}
    loaded, meta = TextDomain().load_model(tmp_path / "m")
    assert isinstance(loaded, TextCNN) and loaded.tokenizer is not None and model.tokenizer is not None
    space = domain.eval_space(3, data, loaded)
    assert isinstance(space, ObfuscationSpace)
    x = space.encode(splits(data)[2].texts[:8])
    with torch.no_grad():
        assert torch.equal(model(x), loaded.eval()(x))
    assert meta["threshold"] == 0.4 and loaded.tokenizer.to_str() == model.tokenizer.to_str()
    (tmp_path / "m" / "tokenizer.json").unlink()
    with pytest.raises(rk.ConfigError, match="tokenizer"):
        TextDomain().load_model(tmp_path / "m")


def test_harden_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "harden",
            "text",
            "--out",
            str(out),
            "--preset",
            "quick",
            "--quiet",
            "--epochs",
            "2",
            "--data",
            "demo:400",
            "--threads",
            "1",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["domain"] == "text" and metrics["threat"]["space"] == "obfuscation"
    for name in ("standard", "hardened"):
        dm = metrics["models"][name]["domain_metrics"]
        for key in (
            "precision_clean",
            "recall_clean",
            "f1_clean",
            "recall_attacked",
            "attack_success_rate",
            "words_edited_share",
            "threshold",
        ):
            assert key in dm
        assert (out / "models" / name / "tokenizer.json").is_file()
    assert (out / "examples" / "examples.csv").is_file() and (out / "examples" / "examples.html").is_file()
    # examples for both models; a success is a spam detected on clean input that the attack turned into ham
    for folder in (out / "examples", out / "examples" / "standard"):
        with (folder / "examples.csv").open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows and any(r["original"] != r["adversarial"] for r in rows)
        for r in rows:
            won = r["success"] == "True"
            assert won == (r["label"] == r["pred_clean"] == "spam" and r["pred_adversarial"] == "ham")
            assert not won or int(float(r["words_edited"])) >= 1
            assert r["pred_clean"] == r["label"] or r["original"] == r["adversarial"]  # only right ones attacked
    evaluated = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "text",
                "--model",
                str(out),
                "--out",
                str(evaluated),
                "--preset",
                "quick",
                "--quiet",
                "--data",
                "demo:400",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert (evaluated / "metrics.json").is_file()


def test_empty_text_is_a_data_error() -> None:
    from domains.text.data import clean_texts

    with pytest.raises(rk.DataError, match="empty"):
        clean_texts(["fine", " \t "], "test")
    with pytest.raises(rk.ConfigError):
        TextDomain().load_data("nope:1", seed=0, options=TextOptions())
