"""An independent query-based attack on a spam filter, to check the text evaluation's figures from outside.

It shares no search code with robustkit: it keeps its own list of words (which are the original's
own, which it changed or inserted), draws its own random variants of each word (separators at random
places, a swap or a deletion at a random place, homoglyphs, leetspeak or invisible characters on random
letters, ham words at random gaps), keeps only the texts the threat model's own
``ObfuscationSpace.contains`` accepts, and queries the decided model for all of them. Each round it takes
the text with the lowest spam score (a beam search keeping ``beam`` texts per spam text), until the
filter calls it ham or the budget is spent. It only reads the model's outputs (black-box).
``bench/text_robustness.py`` runs it beside the evaluation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

import robustkit as rk
from domains.text.obfuscation import HAM_WORDS, HOMOGLYPHS, LEET, SEPARATORS, ObfuscationSpace

#: invisible characters a spammer can put between letters
INVISIBLE = ("\u200b", "\u200c", "\u200d", "\u2060")


@dataclass
class Text:
    """A text as words, with whether each is still the original's own."""

    words: list[str]
    own: list[bool]

    @property
    def text(self) -> str:
        return " ".join(self.words)


def variants(word: str, rng: random.Random, n: int) -> list[str]:
    """``n`` random obfuscations of ``word`` (some may fall outside the threat model: contains decides)."""
    out = []
    for _ in range(n):
        kind = rng.randrange(7)
        chars = list(word)
        if kind == 0 and len(word) > 1:  # separators between a random set of letters
            sep = rng.choice(SEPARATORS)
            cut = set(rng.sample(range(1, len(word)), rng.randint(1, len(word) - 1)))
            out.append("".join((sep if i in cut else "") + c for i, c in enumerate(word)))
        elif kind == 1 and len(word) > 3:
            i = rng.randrange(len(word) - 1)
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
            out.append("".join(chars))
        elif kind == 2 and len(word) > 3:
            i = rng.randrange(len(word))
            out.append(word[:i] + word[i + 1 :])
        elif kind in (3, 4):  # homoglyphs or leetspeak on random letters
            table = HOMOGLYPHS if kind == 3 else LEET
            at = [i for i, c in enumerate(word) if c in table]
            if at:
                for i in rng.sample(at, rng.randint(1, len(at))):
                    chars[i] = table[chars[i]]
                out.append("".join(chars))
        elif kind == 5:
            i = rng.randint(0, len(word))
            out.append(word[:i] + rng.choice(INVISIBLE) + word[i:])
        else:  # homoglyphs and an invisible character together
            at = [i for i, c in enumerate(word) if c in HOMOGLYPHS]
            for i in rng.sample(at, min(len(at), rng.randint(1, 2))):
                chars[i] = HOMOGLYPHS[chars[i]]
            i = rng.randint(0, len(word))
            out.append("".join(chars[:i]) + rng.choice(INVISIBLE) + "".join(chars[i:]))
    return [v for v in dict.fromkeys(out) if v != word]


def spam_scores(decided: nn.Module, space: ObfuscationSpace, texts: list[str], batch: int = 1024) -> torch.Tensor:
    """The decided model's spam-minus-ham logit per text (its decision, argmax: ham at 0 or below)."""
    device = next(decided.parameters()).device
    out = []
    with rk.frozen_eval(decided), torch.no_grad():
        for i in range(0, len(texts), batch):
            logits = rk.logits_of(decided(space.encode(texts[i : i + batch], device))).float()
            out.append((logits[:, 1] - logits[:, 0]).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def attack(
    decided: nn.Module, space: ObfuscationSpace, texts: Sequence[str], *, per_word: int = 10, inserts: int = 20,
    beam: int = 1, seed: int = 0,
) -> tuple[list[str], list[bool], int]:
    """Each spam text attacked; returns the texts, whether each now reads as ham, and the queries spent."""
    results, won, queries = [], [], 0
    for k, original in enumerate(texts):
        rng = random.Random(f"independent:{seed}:{k}")
        start = Text(original.split(), [True] * len(original.split()))
        score = float(spam_scores(decided, space, [original])[0])
        queries += 1
        beams = [(score, start)]
        best_score, best = score, start
        for _ in range(int(space.limit(original))):
            if best_score <= 0:
                break
            proposals: list[Text] = []
            for _, cur in beams:
                for i, w in enumerate(cur.words):
                    if cur.own[i]:
                        for v in variants(w, rng, per_word):
                            proposals.append(Text([*cur.words[:i], v, *cur.words[i + 1:]],
                                                  [*cur.own[:i], False, *cur.own[i + 1:]]))
                for _ in range(inserts):
                    gap = rng.randint(0, len(cur.words))
                    proposals.append(Text([*cur.words[:gap], rng.choice(HAM_WORDS), *cur.words[gap:]],
                                          [*cur.own[:gap], False, *cur.own[gap:]]))
            unique = list({p.text: p for p in proposals}.values())
            if not unique:
                break
            ok = space.contains([p.text for p in unique], [original] * len(unique)).tolist()
            unique = [p for p, good in zip(unique, ok, strict=True) if good]
            if not unique:
                break
            scores = spam_scores(decided, space, [p.text for p in unique])
            queries += len(unique)
            order = torch.argsort(scores).tolist()[:beam]
            beams = [(float(scores[j]), unique[j]) for j in order]
            if beams[0][0] < best_score:
                best_score, best = beams[0]
        results.append(best.text)
        won.append(best_score <= 0)
    return results, won, queries
