"""Spam obfuscation as a discrete space over real strings: what a spammer can send.

Edits work on words (runs of non-space characters). A word may get one trick: homoglyphs, leetspeak,
a zero-width character, separators between its letters ("f.r.e.e"), a swap or a deletion of one of
its characters; or a ham-like word may be inserted between words. The budget is the number of edited
or inserted words. The payload (URLs, phone numbers and short codes, amounts and prices, and
call-to-action words) is never deleted or replaced: only invisible characters and homoglyphs may touch
it (separators too for call-to-action words), so a person still reads the same offer.

:func:`edit_cost` recovers the number of edits from the two strings alone (an alignment of their
words), so :meth:`ObfuscationSpace.contains` checks any text, not only the search's own output.

The homoglyph table below is a small hand-picked set of Cyrillic letters chosen by visual similarity
to Latin ones; Unicode Technical Standard #39 (confusables) has the full list.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Collection, Sequence
from functools import lru_cache

import torch
from tokenizers import Tokenizer

from robustkit.errors import ConfigError
from robustkit.spaces import DiscreteSpace, Edit

from .model import encode_ids, pad_inputs

__all__ = ["HAM_WORDS", "HOMOGLYPHS", "TRICKS", "ObfuscationSpace", "edit_cost", "fold", "is_payload", "words"]

#: Latin letter -> a Cyrillic letter that looks the same in common fonts (hand-picked; see TR39)
HOMOGLYPHS = {
    "a": "\u0430",
    "c": "\u0441",
    "e": "\u0435",
    "i": "\u0456",
    "j": "\u0458",
    "o": "\u043e",
    "p": "\u0440",
    "s": "\u0455",
    "x": "\u0445",
    "y": "\u0443",
    "A": "\u0410",
    "B": "\u0412",
    "C": "\u0421",
    "E": "\u0415",
    "H": "\u041d",
    "K": "\u041a",
    "M": "\u041c",
    "O": "\u041e",
    "P": "\u0420",
    "T": "\u0422",
    "X": "\u0425",
}
_UNGLYPH = {v: k for k, v in HOMOGLYPHS.items()}
LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}
_UNLEET = {v: k for k, v in LEET.items()}
ZERO_WIDTH = "\u200b"
_INVISIBLE = {"\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"}
SEPARATORS = ".-*_"
#: words a spammer inserts to look like ham (everyday words)
HAM_WORDS = ("thanks", "love", "home", "tonight", "sorry", "dinner", "mum", "lol", "ok", "later")
#: call-to-action words: part of the payload
CTA_WORDS = frozenset(
    {"call", "text", "txt", "reply", "click", "visit", "claim", "redeem", "send", "dial", "buy", "order", "subscribe"}
)

_URL = re.compile(r"(https?://|www\.)\S|[a-z0-9-]+\.(com|net|org|biz|info|co\.uk|uk)\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d{4,}")
_PRICE = re.compile(r"[£$€]\s?\d|\d[£$€]|\d+(\.\d+)?(p|pence|gbp|usd|eur)\b", re.IGNORECASE)
_WORD = re.compile(r"\S+")
_KINDS = ("homoglyph", "zero-width", "separators", "leet", "swap", "delete")
_KIND_WEIGHT = {k: 1.0 - 0.01 * i for i, k in enumerate(_KINDS)}
#: every trick of the space: one per word, or the insertion of a ham word
TRICKS = (*_KINDS, "insert")
#: maps a text to the text the model reads and, per character of it, the index of the word it comes from
Normaliser = Callable[[str], tuple[str, list[int]]]


def words(text: str) -> list[str]:
    """The words of a text: its runs of non-space characters."""
    return _WORD.findall(text)


def _core(word: str) -> str:
    return word.strip("".join(_INVISIBLE) + "!?,;:.()\"'").lower()


def payload_kind(word: str) -> str | None:
    """``"url"``, ``"number"``, ``"price"``, ``"cta"`` or None for an ordinary word."""
    if _URL.search(word):
        return "url"
    if _PRICE.search(word):
        return "price"
    if _NUMBER.search(word):
        return "number"
    if _core(word) in CTA_WORDS:
        return "cta"
    return None


def is_payload(word: str) -> bool:
    """Whether a word is part of the spam's payload (never deleted or replaced)."""
    return payload_kind(word) is not None


def _strip_invisible(text: str) -> str:
    return "".join(ch for ch in text if ch not in _INVISIBLE)


@lru_cache(maxsize=65536)
def fold(word: str, *, leet: bool = True, separators: bool = True) -> str:
    """The word with the tricks undone: invisible characters, homoglyphs, (separators, leetspeak)."""
    out = "".join(_UNGLYPH.get(ch, ch) for ch in _strip_invisible(word))
    if separators:
        out = "".join(ch for ch in out if ch not in SEPARATORS)
    if leet:
        out = "".join(_UNLEET.get(ch, ch) for ch in out)
    return out.lower()


def _substitution_ok(orig: str, new: str) -> bool:
    """Whether ``new`` is one allowed trick applied to the word ``orig``."""
    kind = payload_kind(orig)
    if kind is not None:  # payload: only invisible characters, homoglyphs (and separators for CTA words)
        return fold(new, leet=False, separators=kind == "cta") == fold(orig, leet=False, separators=kind == "cta")
    if fold(new) == fold(orig):
        return True
    if len(orig) >= 4 and len(new) == len(orig):
        diff = [i for i in range(len(orig)) if orig[i] != new[i]]
        return (
            len(diff) == 2
            and diff[1] == diff[0] + 1
            and orig[diff[0]] == new[diff[1]]
            and orig[diff[1]] == new[diff[0]]
        )
    if len(orig) >= 4 and len(new) == len(orig) - 1:
        return any(orig[:i] + orig[i + 1 :] == new for i in range(len(orig)))
    return False


def _insertable(word: str) -> bool:
    return word.lower() in HAM_WORDS


def edit_cost(original: str, adversarial: str) -> float:
    """Fewest word edits (tricks and insertions) turning ``original`` into ``adversarial``; inf if none.

    Words of the original are never deleted; an adversarial word is either an original word, one
    allowed trick on it, or an inserted ham word.
    """
    if original == adversarial:
        return 0.0
    o, a = words(original), words(adversarial)
    inf = math.inf
    prev = [0.0] + [inf] * len(a)
    for j in range(1, len(a) + 1):
        prev[j] = prev[j - 1] + 1 if _insertable(a[j - 1]) else inf
    for i in range(1, len(o) + 1):
        cur = [inf] * (len(a) + 1)
        for j in range(1, len(a) + 1):
            best = cur[j - 1] + 1 if _insertable(a[j - 1]) else inf
            if prev[j - 1] < inf:
                if o[i - 1] == a[j - 1]:
                    best = min(best, prev[j - 1])
                elif _substitution_ok(o[i - 1], a[j - 1]):
                    best = min(best, prev[j - 1] + 1)
            cur[j] = best
        prev = cur
    return prev[len(a)]


@lru_cache(maxsize=65536)
def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of an embedding table (on any device) as float32 on the CPU."""
    return table[index.to(table.device)].float().cpu()


def _tricks(word: str) -> tuple[tuple[str, str], ...]:
    """(kind, new word) for every trick allowed on ``word``."""
    kind = payload_kind(word)
    out: list[tuple[str, str]] = []
    glyphed = "".join(HOMOGLYPHS.get(ch, ch) for ch in word)
    if glyphed != word:
        out.append(("homoglyph", glyphed))
    if len(word) >= 2:
        out.append(("zero-width", word[0] + ZERO_WIDTH + word[1:]))
    letters = word.isalpha() and 2 <= len(word) <= 12
    if letters and kind in (None, "cta"):
        out.append(("separators", ".".join(word)))
    if kind is None:
        leet = "".join(LEET.get(ch, ch) for ch in word)
        if leet != word:
            out.append(("leet", leet))
        if len(word) >= 4:
            m = len(word) // 2
            if word[m - 1] != word[m]:
                out.append(("swap", word[: m - 1] + word[m] + word[m - 1] + word[m + 1 :]))
            out.append(("delete", word[:m] + word[m + 1 :]))
    return tuple((k, w) for k, w in out if _substitution_ok(word, w))


class ObfuscationSpace(DiscreteSpace[str]):
    """Real strings within ``budget`` edited or inserted words of the original, payload intact.

    ``max_share`` (in (0, 1]) also caps the edits at that share of the original's words, at least one:
    with 0.2, a 6-word text takes 1 edit and a 30-word one up to 6, never more than ``budget``. Without
    it, insertions can outnumber a short text's own words.

    ``encode`` tokenizes with the model's tokenizer into the model's input ``(N, L, 1 + dim)``
    (:mod:`domains.text.model`); ``scores`` ranks edits by the gradient on the embeddings of the
    word they touch (gradient word importance, as A2T's greedy search), tricks in a fixed order.

    ``tricks`` limits the search to a subset of :data:`TRICKS` (an adaptive attacker avoiding what a
    defence undoes); ``contains`` still accepts every trick. ``normaliser`` (e.g.
    :func:`domains.text.normalise.normalise_aligned`) is applied to every text before the model reads
    it, so attacks are judged on what a deployed filter with that normaliser sees.
    """

    name = "obfuscation"

    def __init__(
        self,
        tokenizer: Tokenizer,
        dim: int,
        budget: float,
        insert_words: Sequence[str] = HAM_WORDS,
        embedding: torch.Tensor | None = None,
        tricks: Collection[str] | None = None,
        normaliser: Normaliser | None = None,
        max_share: float | None = None,
    ):
        super().__init__(budget)
        if max_share is not None and (isinstance(max_share, bool) or not isinstance(max_share, int | float)
                                      or not 0 < max_share <= 1):
            raise ConfigError(f"max_share must lie in (0, 1] (a share of the original's words), got {max_share!r}")
        #: the cap on edits as a share of the original's words (None: the budget alone)
        self.max_share = None if max_share is None else float(max_share)
        unknown = sorted(set(tricks or ()) - set(TRICKS))
        if unknown or (tricks is not None and not tricks):
            raise ConfigError(f"unknown obfuscation trick {unknown[0] if unknown else None!r}: use {', '.join(TRICKS)}")
        #: the tricks the search may use (all by default)
        self.tricks = frozenset(TRICKS if tricks is None else tricks)
        self.normaliser = normaliser
        self._ids_cache: dict[str, list[int]] = {}
        #: the model's embedding table for first-order scores (None: gradient word importance)
        self.embedding = embedding
        self.tokenizer = tokenizer
        self.dim = int(dim)
        self.insert_words = tuple(w for w in insert_words if _insertable(w))

    def model_text(self, x: str) -> str:
        """The text as the model reads it (normalised if the space has a normaliser)."""
        return x if self.normaliser is None else self.normaliser(x)[0]

    def encode(self, xs: Sequence[str], device: torch.device | str = "cpu") -> torch.Tensor:
        return pad_inputs(encode_ids(self.tokenizer, [self.model_text(x) for x in xs]), self.dim, device)

    def limit(self, original: str) -> float:
        """Edits allowed on ``original``: the budget, capped by ``max_share`` of its words (at least one).

        Example:
            >>> from tokenizers import Tokenizer
            >>> from tokenizers.models import WordPiece
            >>> space = ObfuscationSpace(Tokenizer(WordPiece(unk_token="[UNK]")), 8, 5, max_share=0.2)
            >>> space.limit("call now"), space.limit("win a free prize " * 5)
            (1.0, 4.0)
        """
        if self.max_share is None:
            return self.budget
        return min(self.budget, max(1.0, float(math.floor(self.max_share * len(words(original)) + 1e-9))))

    def candidates(self, x: str, original: str) -> list[Edit]:
        if edit_cost(original, x) + 1 > self.limit(original):
            return []
        orig_words = set(words(original))
        spans = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(x)]
        edits: list[Edit] = []
        for k, (start, end, word) in enumerate(spans):
            if word not in orig_words:  # already edited (or inserted)
                continue
            for kind, new in _tricks(word):
                if kind in self.tricks:
                    edits.append(Edit(k, (x[:start] + new + x[end:], kind, k)))
        if "insert" not in self.tricks:
            return edits
        spots = [0, len(spans)] if len(spans) > 1 else [len(spans)]
        for pos in spots:
            for w in self.insert_words:
                text = (w + " " + x) if pos == 0 else (x + " " + w)
                edits.append(Edit(pos, (text, "insert", pos)))
        return edits

    def apply(self, x: str, edit: Edit) -> str:
        return str(edit.value[0])

    def scores(self, x: str, grad: torch.Tensor, edits: Sequence[Edit]) -> torch.Tensor:
        """HotFlip-style first-order estimates with the model's embedding table (if bound), else word saliency.

        With ``embedding`` (the model's table): a trick replacing a word's tokens by new ones scores
        ``sum <g_word, E[new]> - sum_p <g_p, E[old_p]>`` with ``g_word`` the mean gradient over the word's
        tokens; an insertion scores ``sum <g_edge, E[new]>`` at the text's first or last token. Without
        it, the gradient norm on the word's tokens (gradient word importance), tricks in a fixed order.
        """
        if not edits:
            return grad.new_zeros(0)
        seen, char_owner = (x, None) if self.normaliser is None else self.normaliser(x)
        enc = self.tokenizer.encode(seen)
        n = min(len(enc.ids), len(grad))
        if n == 0:  # nothing the model reads (e.g. only invisible characters under a normaliser)
            return grad.new_zeros(len(edits))
        g = grad[:n, 1:].float().cpu()
        spans = [(m.start(), m.end()) for m in _WORD.finditer(x)]
        starts = [ws for ws, _ in spans]
        owner = [-1] * n
        for p, (s, _end) in enumerate(enc.offsets[:n]):
            if char_owner is not None:
                owner[p] = char_owner[s] if s < len(char_owner) else -1
                continue
            k = bisect.bisect_right(starts, s) - 1
            if k >= 0 and s < spans[k][1]:
                owner[p] = k
        # the table stays where the model is: only the rows this text needs come to the CPU (copying a
        # transformer's whole table for every text made the search 10x slower on a GPU)
        table = None if self.embedding is None else self.embedding.detach()
        if table is None:
            saliency = g.norm(dim=-1)
            per_word = torch.zeros(max(1, len(spans)))
            for p, k in enumerate(owner):
                if k >= 0:
                    per_word[k] += saliency[p]
            mean = float(per_word.mean())
            return torch.tensor(
                [
                    0.5 * mean if kind == "insert" else float(per_word[k]) * _KIND_WEIGHT[kind]
                    for _, kind, k in (e.value for e in edits)
                ],
                device=grad.device,
            )
        ids = torch.tensor(enc.ids[:n], dtype=torch.long).clamp(0, len(table) - 1)
        current = (g * _rows(table, ids)).sum(dim=-1)
        # per word: the mean gradient over its tokens and the sum of <g_p, E[old_p]>; then the two edges
        n_words = len(spans)
        own = torch.tensor(owner, dtype=torch.long)
        mine = own >= 0
        counts = torch.zeros(n_words).index_add_(0, own[mine], torch.ones(int(mine.sum())))
        g_word = torch.zeros(n_words, g.shape[1]).index_add_(0, own[mine], g[mine]) / counts.clamp_min(1)[:, None]
        old = torch.zeros(n_words).index_add_(0, own[mine], current[mine])
        rows: list[int] = []
        cols: list[int] = []
        segment: list[int] = []
        base = [0.0] * len(edits)
        for j, edit in enumerate(edits):
            text, kind, k = edit.value
            if kind == "insert":
                row, word = (n_words, text.split(" ", 1)[0]) if k == 0 else (n_words + 1, text.rsplit(" ", 1)[1])
            elif counts[k] > 0:
                start, end = spans[k]
                row, word, base[j] = k, text[start : len(text) - (len(x) - end)], -float(old[k])
            else:
                continue
            new_ids = self._word_ids(word)
            rows += [row] * len(new_ids)
            cols += new_ids
            segment += [j] * len(new_ids)
        vectors = torch.cat([g_word, g[:1], g[n - 1 : n]])
        used, where = torch.unique(torch.tensor(cols, dtype=torch.long).clamp(0, len(table) - 1), return_inverse=True)
        dots = (vectors @ _rows(table, used).T)[torch.tensor(rows, dtype=torch.long), where]
        out = torch.tensor(base).index_add_(0, torch.tensor(segment, dtype=torch.long), dots)
        return out.to(grad.device)

    def _word_ids(self, word: str) -> list[int]:
        """Token ids of one word as the model reads it (cached: the search asks for the same words often)."""
        ids = self._ids_cache.get(word)
        if ids is None:
            if len(self._ids_cache) >= 100_000:
                self._ids_cache.clear()
            ids = self._ids_cache[word] = self.tokenizer.encode(self.model_text(word)).ids or [0]
        return ids

    def contains(self, x_adv: Sequence[str], x: Sequence[str]) -> torch.Tensor:
        if len(x_adv) != len(x):
            return torch.zeros(len(x), dtype=torch.bool)
        ok = [
            isinstance(a, str) and isinstance(o, str) and bool(o.strip()) and edit_cost(o, a) <= self.limit(o)
            for a, o in zip(x_adv, x, strict=True)
        ]
        return torch.tensor(ok, dtype=torch.bool)

    def edited_share(self, x_adv: Sequence[str], x: Sequence[str]) -> list[float]:
        """Share of words edited (edits over the original's word count) per pair."""
        return [edit_cost(o, a) / max(1, len(words(o))) for a, o in zip(x_adv, x, strict=True)]
