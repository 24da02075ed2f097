"""The obfuscation space reaches its whole threat model, and every attack's output stays inside it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

import robustkit as rk
from domains.text import TextCNN, TextDataset
from domains.text.adversarial import DiscreteAdversarialTraining
from domains.text.model import MAX_TOKENS, TokenModel, train_tokenizer
from domains.text.obfuscation import (
    HAM_WORDS,
    HOMOGLYPHS,
    LEET,
    SEPARATORS,
    ObfuscationSpace,
    _tricks,
    edit_cost,
    fold,
    words,
)

CRASH = "if u love rihanna subscribe me"
CORPUS = [CRASH, "win a free prize call 08001234567 now", "see you at home tonight love", "txt WIN to 81618 £100",
          "visit www.prizes.com to claim", "ok lol thanks :) :) see u later!!!", "free free free entry 2day 🎉🎉"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer(CORPUS * 3, vocab_size=200)


def model_for(tokenizer: Tokenizer, seed: int = 0) -> TextCNN:
    torch.manual_seed(seed)
    model = TextCNN(tokenizer.get_vocab_size(), 8, 8, 3, 2)
    model.tokenizer = tokenizer  # type: ignore[assignment]
    return model.eval()


def space_for(model: TextCNN, tokenizer: Tokenizer, budget: float = 3) -> ObfuscationSpace:
    return ObfuscationSpace(tokenizer, 8, budget, embedding=model.embedding.weight)


def test_an_inserted_ham_word_equal_to_an_original_word_is_never_edited(tokenizer: Tokenizer) -> None:
    # the crash of issue 17: "love" inserted at the end was then edited as the original's own "love"
    space = space_for(model_for(tokenizer), tokenizer)
    once = CRASH + " love"
    edits = space.candidates(once, CRASH)
    touched = {e.value[2] for e in edits if e.value[1] != "insert"}
    assert 6 not in touched and touched == set(range(6))
    twice = [space.apply(once, e) for e in edits]
    assert bool(space.contains(twice, [CRASH] * len(twice)).all())
    assert edit_cost(CRASH, CRASH + " l.o.v.e") == float("inf")
    # and the search and training both finish on it, for any model and seed
    for seed in range(4):
        model = model_for(tokenizer, seed)
        for attack in (rk.DiscreteSearch(space, candidates_per_step=16, early_stop=False, restarts=2, random_share=0.5,
                                          seed=seed), rk.QuerySearch(space, early_stop=False, seed=seed)):
            result = attack(model, [CRASH], [1])
            assert bool(space.contains(result.x_adv, [CRASH]).all())


def test_every_allowed_variant_of_a_word_is_reachable() -> None:
    word = "prizes"
    offered = {w for seed in range(40) for _, w in _tricks(word, seed)}
    assert {word[:p] + word[p + 1] + word[p] + word[p + 2:] for p in range(len(word) - 1)} <= offered  # every swap
    assert {word[:p] + word[p + 1:] for p in range(len(word))} <= offered  # every deletion
    assert {sep.join(word) for sep in SEPARATORS} <= offered  # every separator
    singles = {word[:p] + s + word[p:] for p in range(1, len(word)) for s in SEPARATORS}
    assert len(singles & offered) > len(singles) // 2  # separators at single positions (other token splits)
    glyphs = [p for p, ch in enumerate(word) if ch in HOMOGLYPHS]
    assert {word[:p] + HOMOGLYPHS[word[p]] + word[p + 1:] for p in glyphs} <= offered  # one homoglyph anywhere
    leet = [p for p, ch in enumerate(word) if ch in LEET]
    assert {word[:p] + LEET[word[p]] + word[p + 1:] for p in leet} <= offered
    invisible = {w for w in offered if fold(w, leet=False, separators=False) == word and len(w) == len(word) + 1}
    assert {w.index(next(c for c in w if c not in word)) for w in invisible} == set(range(len(word) + 1))


def test_ham_words_go_into_every_gap(tokenizer: Tokenizer) -> None:
    space = space_for(model_for(tokenizer), tokenizer)
    text = "win a free prize"
    inserted = {space.apply(text, e) for e in space.candidates(text, text) if e.value[1] == "insert"}
    gaps = {" ".join([*words(text)[:g], w, *words(text)[g:]]) for g in range(5) for w in HAM_WORDS}
    assert inserted == gaps


def test_url_host_homoglyphs_are_an_option() -> None:
    url, other = "www.paypal.com/login", "www.p\u0430yp\u0430l.com/login"
    assert edit_cost(url, other) == float("inf")
    assert edit_cost(url, other, url_host_homoglyphs=True) == 1
    assert edit_cost(url, "www.paypal.com/l\u043egin") == 1  # the path is not the domain
    assert edit_cost(url, "www.pay\u200bpal.com/login") == 1  # invisible: reads (and types) the same
    assert edit_cost("call 08001234567", "call 0800\u200b1234567") == 1  # the same digits to dial
    assert edit_cost("call 08001234567", "call 08001234576") == float("inf")


# ----------------------------------------------------------------------------- properties
PIECES = st.sampled_from([
    "free", "win", "prize", "love", "love", "home", "ok", "call", "txt", "claim", "now", "u", "!!!", "...", "?!",
    "🎉", "😂👍", "www.win.com", "http://x.co.uk/a?b=1", "08001234567", "81618", "£1000", "2day", "a", "I", "",
    *HAM_WORDS,
])
TEXTS = st.lists(st.lists(PIECES, min_size=1, max_size=5).map("".join), min_size=1, max_size=9).map(" ".join).filter(
    lambda t: bool(t.strip())
)


@settings(max_examples=15, deadline=None)
@given(corpus=st.lists(TEXTS, min_size=1, max_size=4), seed=st.integers(0, 3), budget=st.integers(1, 3))
def test_search_training_and_contains_agree(tokenizer: Tokenizer, corpus: list[str], seed: int, budget: int) -> None:
    model = model_for(tokenizer, seed)
    space = space_for(model, tokenizer, budget).with_seed(seed)
    # every candidate is inside the space, at one more edit
    for text in corpus:
        for edit in space.candidates(text, text)[::7]:
            assert edit_cost(text, space.apply(text, edit)) == 1
    y = [1] * len(corpus)
    for attack in (rk.DiscreteSearch(space, candidates_per_step=8, restarts=2, random_share=0.5, early_stop=False,
                                      seed=seed),
                   rk.QuerySearch(space, positions_per_step=2, queries_per_position=8, early_stop=False, seed=seed)):
        result = attack(model, corpus, y)
        assert bool(space.contains(result.x_adv, corpus).all())
        assert all(edit_cost(o, a) <= budget for o, a in zip(corpus, result.x_adv, strict=True))
    # discrete training generates from the same texts without crashing, inside the space
    data = TextDataset(corpus, y, tokenizer, 8)
    method = DiscreteAdversarialTraining(data, space, clean_epochs=0)
    trainer = rk.AdversarialTrainer(model, rk.LinfBall(eps=0.0), method=method, progress=False, seed=seed,
                                    optimizer=torch.optim.SGD(model.parameters(), lr=0.0))
    trainer.fit(torch.utils.data.DataLoader(data, batch_size=8, collate_fn=data.collate), epochs=1)
    assert method.sources == corpus and bool(space.contains(method.generated, method.sources).all())


def _bert_like(corpus: list[str]) -> Tokenizer:
    """A tokenizer configured like BERT's (its normaliser strips accents and control characters)."""
    from tokenizers import normalizers, pre_tokenizers

    tok = train_tokenizer(corpus * 3, vocab_size=200)
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def _byte_level(corpus: list[str]) -> Tokenizer:
    """A byte-level BPE tokenizer: its tokens carry the space before a word, so chunks cannot be cached."""
    from tokenizers import models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(corpus * 3, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    return tok


ODD = st.sampled_from([" ", "  ", "\u00a0", "\u200b", "\u0301", "\t", "\n", "é", "İ", "ß", "\u0430", "1", "!",
                       "www.x.co", "s.u.b", "ＷＩＮ", "\x1c", "\u3000", "中文"])
ODD_TEXTS = st.lists(st.one_of(PIECES, ODD), max_size=40).map("".join)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(ODD_TEXTS, min_size=1, max_size=6), kind=st.sampled_from(["builtin", "bert", "byte-level"]),
       truncate=st.sampled_from([None, 3, 128]))
def test_the_chunk_encoder_gives_the_tokenizers_ids(texts: list[str], kind: str, truncate: int | None) -> None:
    """A search encodes variants from cached chunks: the ids must be the tokenizer's own, for any text."""
    from domains.text.model import ChunkEncoder, encode_ids

    tok = {"builtin": lambda c: train_tokenizer(c * 3, vocab_size=200), "bert": _bert_like,
           "byte-level": _byte_level}[kind](CORPUS)
    if truncate is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(truncate)
    encoder = ChunkEncoder(tok)
    assert encoder.cached == (kind != "byte-level")
    assert encoder(texts) == encode_ids(tok, texts)
    assert encoder(texts[::-1]) == encode_ids(tok, texts[::-1])  # from the cache this time


def test_an_edit_applied_to_another_text_is_refused(tokenizer: Tokenizer) -> None:
    """An edit names the word it replaces: applied to a text where that word is not, it is an error, not a
    silently wrong text."""
    space = ObfuscationSpace(tokenizer, 8, 2)
    edit = next(e for e in space.candidates(CRASH, CRASH) if e.value[1] != "insert")
    assert space.apply(CRASH, edit) != CRASH
    with pytest.raises(rk.ConfigError, match="does not fit"):
        space.apply("completely different words here now", edit)


class SumLinear(TokenModel):
    """Logits ``(0, sum_p <w_p, e_p>)``: linear in the embeddings, so a first-order score is exact. With one
    ``w`` for every position (``positional=False``) for every edit; with ``w_p`` varying, for the edits that
    leave every other token where it was (a trick keeping the word's token count)."""

    def __init__(self, vocab_size: int, dim: int, positional: bool) -> None:
        super().__init__(vocab_size, dim)
        self.w = torch.nn.Parameter(torch.randn(256 if positional else 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb, _ = self.embed(x)
        z = (emb * self.w[: emb.shape[1]]).sum(dim=(1, 2))
        return torch.stack([torch.zeros_like(z), z], dim=1)


@settings(max_examples=20, deadline=None)
@given(text=TEXTS, seed=st.integers(0, 3), positional=st.booleans())
def test_hotflip_scores_are_exact_on_a_model_linear_in_its_embeddings(tokenizer: Tokenizer, text: str, seed: int,
                                                                       positional: bool) -> None:
    # each edit scores the loss's derivative times the exact change of the logit: a wrong word, token or
    # gap breaks the equality (the positional model checks each token against its own gradient)
    torch.manual_seed(seed)
    model = SumLinear(tokenizer.get_vocab_size(), 8, positional).eval()
    space = ObfuscationSpace(tokenizer, 8, 3, embedding=model.embedding.weight, seed=seed)
    x = space.encode([text]).requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, torch.tensor([1])), x)
    edits = space.candidates(text, text)
    assert edits
    edited = space.encode([space.apply(text, e) for e in edits])
    with torch.no_grad():
        moved = model(edited)[:, 1] - logits[0, 1]
        slope = torch.softmax(logits[0], dim=0)[1] - 1  # d loss / d logit 1
    scale = model.embedding.weight.detach().norm(dim=1).mean()  # TokenModel.embed scales the offsets by it
    expected, scores = scale * slope * moved, space.scores(text, grad[0], edits)
    tokens = (edited[..., 0] != 0).sum(dim=1)
    kept = tokens < MAX_TOKENS  # truncation drops the text's last tokens: no first-order estimate sees that
    if positional:
        kept &= torch.tensor([e.value[1] != "insert" for e in edits]) & (tokens == int((x[0, :, 0] != 0).sum()))
    assume(bool(kept.any()))
    expected, scores = expected[kept], scores[kept]
    assert torch.allclose(scores, expected, atol=1e-4 * float(expected.abs().max()) + 1e-6)
