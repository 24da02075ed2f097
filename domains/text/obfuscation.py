"""Spam obfuscation as a discrete space over real strings: what a spammer can send.

Edits work on words (runs of non-space characters). A word may get one trick: homoglyphs, leetspeak,
a zero-width character, separators between its letters ("f.r.e.e"), a swap or a deletion of one of
its characters; or a ham-like word may be inserted between words. The budget is the number of edited
or inserted words. The payload (URLs, phone numbers and short codes, amounts and prices, and
call-to-action words) is never deleted or replaced: only invisible characters and homoglyphs may touch
it (separators too for call-to-action words), so a person still reads the same offer. Two choices
of that rule: a homoglyph inside a URL's host is another domain, which the spammer would have to own,
so it is refused unless ``url_host_homoglyphs=True`` (invisible characters stay allowed there: the
text reads the same); invisible characters inside phone numbers and short codes are allowed, since
the reader still sees and dials the same digits (only a phone's tap-to-call link may break, which costs
the spammer some replies, not the message).

Every word of the original may take any one trick, and :meth:`ObfuscationSpace.candidates` can reach
all of them: it offers every swap, deletion and separator character, and samples subsets of letters
for homoglyphs, leetspeak, separators and invisible characters (single positions included, which
change a subword tokenizer's split of the word), a fresh sample for every ``seed``
(:meth:`ObfuscationSpace.with_seed`); ham words may be inserted in every gap. Which words are still
the original's own is read from an alignment of the two texts, never from the words' spelling, so an
inserted ham word equal to a word of the original is never edited as if it were the original's.

:func:`edit_cost` recovers the number of edits from the two strings alone (an alignment of their
words), so :meth:`ObfuscationSpace.contains` checks any text, not only the search's own output.

The homoglyph table below is a small hand-picked set of Cyrillic letters chosen by visual similarity
to Latin ones; Unicode Technical Standard #39 (confusables) has the full list.
"""

from __future__ import annotations

import bisect
import copy
import math
import random
import re
from collections.abc import Callable, Collection, Sequence
from functools import lru_cache

import torch
from tokenizers import Tokenizer

from robustkit.errors import ConfigError
from robustkit.spaces import DiscreteSpace, Edit

from .model import ChunkEncoder, pad_inputs

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


@lru_cache(maxsize=65536)
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


def _host_span(word: str) -> tuple[int, int] | None:
    """Where a URL word's host lies in the word with its invisible characters removed (None: no URL)."""
    text = _strip_invisible(word)
    found = _URL.search(text)
    if found is None:
        return None
    scheme = text.find("://")
    start = scheme + 3 if scheme >= 0 else found.start()
    end = next((i for i in range(start, len(text)) if text[i] in "/?#"), len(text))
    while end > start and text[end - 1] in ".,!?;:)'\"":
        end -= 1
    return start, end


def _substitution_ok(orig: str, new: str, url_host_homoglyphs: bool = False) -> bool:
    """Whether ``new`` is one allowed trick applied to the word ``orig``."""
    kind = payload_kind(orig)
    if kind is not None:  # payload: only invisible characters, homoglyphs (and separators for CTA words)
        if fold(new, leet=False, separators=kind == "cta") != fold(orig, leet=False, separators=kind == "cta"):
            return False
        span = None if kind != "url" or url_host_homoglyphs else _host_span(orig)
        if span is None:
            return True
        # the same characters at the host's place (both texts have it there: fold keeps lengths)
        a, b = _strip_invisible(orig), _strip_invisible(new)
        return a[span[0] : span[1]].lower() == b[span[0] : span[1]].lower()
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


_FREE, _SUB, _INS = 0, 1, 2


@lru_cache(maxsize=8192)
def _alignment(original: str, adversarial: str, url_host_homoglyphs: bool = False) -> tuple[float, tuple[bool, ...]]:
    """Fewest edits turning ``original`` into ``adversarial`` and, per adversarial word, whether it is
    an original word left as it was in one alignment with that fewest number (unchanged words preferred)."""
    o, a = words(original), words(adversarial)
    inf = math.inf
    cost = [[inf] * (len(a) + 1) for _ in range(len(o) + 1)]
    move = [[_INS] * (len(a) + 1) for _ in range(len(o) + 1)]
    cost[0][0] = 0.0
    for i in range(len(o) + 1):
        for j in range(1, len(a) + 1):
            best, how = (cost[i][j - 1] + 1, _INS) if _insertable(a[j - 1]) else (inf, _INS)
            if i and cost[i - 1][j - 1] < inf:
                if o[i - 1] == a[j - 1]:
                    if cost[i - 1][j - 1] <= best:
                        best, how = cost[i - 1][j - 1], _FREE
                elif cost[i - 1][j - 1] + 1 < best and _substitution_ok(o[i - 1], a[j - 1], url_host_homoglyphs):
                    best, how = cost[i - 1][j - 1] + 1, _SUB
            cost[i][j], move[i][j] = best, how
    total = cost[len(o)][len(a)]
    free = [False] * len(a)
    i, j = len(o), len(a)
    while total < inf and j > 0:
        how = move[i][j]
        free[j - 1] = how == _FREE
        i, j = (i, j - 1) if how == _INS else (i - 1, j - 1)
    return total, tuple(free)


def edit_cost(original: str, adversarial: str, *, url_host_homoglyphs: bool = False) -> float:
    """Fewest word edits (tricks and insertions) turning ``original`` into ``adversarial``; inf if none.

    Words of the original are never deleted; an adversarial word is either an original word, one
    allowed trick on it, or an inserted ham word.

    Example:
        >>> edit_cost("if u love rihanna subscribe me", "if u love rihanna subscribe me love")
        1.0
        >>> edit_cost("if u love rihanna subscribe me", "if u love rihanna s.u.b.s.c.r.i.b.e me l.o.v.e")
        inf
        >>> edit_cost("visit www.paypal.com now", "visit www.p\u0430yp\u0430l.com now")  # another domain
        inf
    """
    if original == adversarial:
        return 0.0
    return _alignment(original, adversarial, url_host_homoglyphs)[0]


def _padded(seqs: Sequence[Sequence[int]], width: int, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequences as rows of a ``(len(seqs), width)`` long tensor padded with ``fill``, and where they are."""
    lengths = torch.tensor([len(seq) for seq in seqs], dtype=torch.long)
    present = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    out = torch.full((len(seqs), width), fill, dtype=torch.long)
    out[present] = torch.tensor([i for seq in seqs for i in seq], dtype=torch.long)
    return out, present


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of an embedding table (on any device) as float32 on the CPU."""
    return table[index.to(table.device)].float().cpu()


def _subsets(rng: random.Random, positions: Sequence[int], count: int) -> list[tuple[int, ...]]:
    """All positions, ``count`` single positions and ``count`` random subsets of them (distinct, ordered)."""
    if not positions:
        return []
    out = {tuple(positions)}
    out.update((p,) for p in rng.sample(list(positions), min(count, len(positions))))
    for _ in range(count):
        out.add(tuple(sorted(rng.sample(list(positions), rng.randint(1, len(positions))))))
    return sorted(out)


@lru_cache(maxsize=65536)
def _tricks(
    word: str, seed: int = 0, samples: int = 3, url_host_homoglyphs: bool = False
) -> tuple[tuple[str, str], ...]:
    """(kind, new word) for the tricks offered on ``word``: every swap, deletion and separator character,
    and ``samples`` random subsets (and single positions) of letters for the other tricks, drawn from ``seed``."""
    kind = payload_kind(word)
    rng = random.Random(f"{seed}:{word}")
    out: list[tuple[str, str]] = []

    def replaced(table: dict[str, str], at: tuple[int, ...]) -> str:
        chars = list(word)
        for p in at:
            chars[p] = table[chars[p]]
        return "".join(chars)

    glyphs = [p for p, ch in enumerate(word) if ch in HOMOGLYPHS]
    out += [("homoglyph", replaced(HOMOGLYPHS, at)) for at in _subsets(rng, glyphs, samples)]
    invisible = sorted(_INVISIBLE)
    for at in _subsets(rng, list(range(len(word) + 1)), samples):
        if len(at) <= len(word) // 2 + 1:  # many invisible characters in a row add nothing a few do not
            chars = list(word)
            for p in reversed(at):
                chars.insert(p, rng.choice(invisible))
            out.append(("zero-width", "".join(chars)))
    fixed_separators, fixed_edits = _fixed_tricks(word, url_host_homoglyphs)
    if kind in (None, "cta"):
        gaps = [p for p in range(1, len(word)) if word[p - 1].isalnum() and word[p].isalnum()]
        out += fixed_separators
        for at in _subsets(rng, gaps, samples):
            sep = rng.choice(SEPARATORS)
            out.append(("separators", "".join(sep + ch if p in at else ch for p, ch in enumerate(word))))
    if kind is None:
        leet = [p for p, ch in enumerate(word) if ch in LEET]
        out += [("leet", replaced(LEET, at)) for at in _subsets(rng, leet, samples)]
        out += fixed_edits
    valid = {w for _, w in fixed_separators + fixed_edits}  # checked once per word, whatever the seed
    # valid by construction: fold() strips invisible characters; on an ordinary word it also maps each
    # homoglyph back to its one letter (no two letters share a glyph) and drops separators
    trusted = {"zero-width", "homoglyph", "separators"} if kind is None else {"zero-width"}
    seen: set[str] = {word}
    kept = []
    for k, w in out:
        if w not in seen and (k in trusted or w in valid or _substitution_ok(word, w, url_host_homoglyphs)):
            seen.add(w)
            kept.append((k, w))
    return tuple(kept)


@lru_cache(maxsize=65536)
def _word_edits(
    k: int, word: str, seed: int, samples: int, url_host_homoglyphs: bool, tricks: frozenset[str]
) -> tuple[Edit, ...]:
    """The edits of word ``k`` (``word``) among ``tricks``: the same every round the word stays in place."""
    return tuple(Edit(k, (word, kind, k, new)) for kind, new in _tricks(word, seed, samples, url_host_homoglyphs)
                 if kind in tricks)


@lru_cache(maxsize=1024)
def _insert_edits(n_words: int, insert_words: tuple[str, ...]) -> tuple[Edit, ...]:
    """A ham word in every gap of a text of ``n_words`` words (position: the number of words plus the gap)."""
    return tuple(Edit(n_words + gap, ("", "insert", gap, w)) for gap in range(n_words + 1) for w in insert_words)


@lru_cache(maxsize=65536)
def _fixed_tricks(
    word: str, url_host_homoglyphs: bool = False
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """The allowed tricks on ``word`` that draw nothing at random: each separator character at every gap,
    and every swap and deletion (words of 4+ characters)."""
    gaps = [p for p in range(1, len(word)) if word[p - 1].isalnum() and word[p].isalnum()]
    separators = [("separators", "".join(sep + ch if p in gaps else ch for p, ch in enumerate(word)))
                  for sep in SEPARATORS] if gaps else []
    edits: list[tuple[str, str]] = []
    if len(word) >= 4:
        edits += [("swap", word[:p] + word[p + 1] + word[p] + word[p + 2 :])
                  for p in range(len(word) - 1) if word[p] != word[p + 1]]
        edits += [("delete", word[:p] + word[p + 1 :]) for p in range(len(word))]

    def ok(found: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        return tuple((k, w) for k, w in found if w != word and _substitution_ok(word, w, url_host_homoglyphs))

    return ok(separators), ok(edits)


class ObfuscationSpace(DiscreteSpace[str]):
    """Real strings within ``budget`` edited or inserted words of the original, payload intact.

    ``max_share`` (in (0, 1]) also caps the edits at that share of the original's words, at least one:
    with 0.2, a 6-word text takes 1 edit and a 30-word one up to 6, never more than ``budget``. Without
    it, insertions can outnumber a short text's own words.

    ``encode`` tokenizes with the model's tokenizer into the model's input ``(N, L, 1 + dim)``
    (:mod:`domains.text.model`); ``scores`` ranks edits by the gradient on the embeddings of the
    word they touch (gradient word importance, as A2T's greedy search), tricks in a fixed order.

    ``tricks`` limits the search to a subset of :data:`TRICKS` (an adaptive attacker avoiding what a
    defence undoes); ``contains`` still accepts every trick. ``samples`` is how many random subsets of
    letters (and single letters) each sampled trick offers per word, drawn anew for every ``seed``
    (:meth:`with_seed`: a search's restarts see other variants). ``url_host_homoglyphs`` lets homoglyphs
    into a URL's host (off: that is another domain, which the spammer would have to own). ``normaliser`` (e.g.
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
        *,
        samples: int = 3,
        seed: int = 0,
        url_host_homoglyphs: bool = False,
    ):
        super().__init__(budget)
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
            raise ConfigError(f"samples must be an integer >= 0 (random variants per trick and word), got {samples!r}")
        #: random subsets of letters offered per sampled trick and word, and the seed they are drawn from
        self.samples, self.seed = samples, int(seed)
        #: whether homoglyphs may go into a URL's host (another domain: off by default)
        self.url_host_homoglyphs = bool(url_host_homoglyphs)
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
        self._encoder = ChunkEncoder(tokenizer)
        #: the model's embedding table for first-order scores (None: gradient word importance)
        self.embedding = embedding
        self.tokenizer = tokenizer
        self.dim = int(dim)
        self.insert_words = tuple(w for w in insert_words if _insertable(w))

    def model_text(self, x: str) -> str:
        """The text as the model reads it (normalised if the space has a normaliser)."""
        return x if self.normaliser is None else self.normaliser(x)[0]

    def encode(self, xs: Sequence[str], device: torch.device | str = "cpu") -> torch.Tensor:
        return pad_inputs(self._encoder([self.model_text(x) for x in xs]), self.dim, device)

    def size(self, x: str) -> int:
        return len(x)

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

    def with_seed(self, seed: int) -> ObfuscationSpace:
        """A copy offering another random sample of variants (same threat model)."""
        clone = copy.copy(self)
        clone.seed = int(seed)
        return clone

    def candidates(self, x: str, original: str) -> list[Edit]:
        """Tricks on the words of ``x`` that are still the original's own, and ham words in every gap.

        An edit's value is ``(word replaced or "", trick, word or gap index, new word)``; its position is the
        word's index, or the number of words plus the gap's index for an insertion. :meth:`apply` builds the
        text (only for the edits a search tries).

        Example:
            >>> from tokenizers import Tokenizer
            >>> from tokenizers.models import WordPiece
            >>> space = ObfuscationSpace(Tokenizer(WordPiece(unk_token="[UNK]")), 8, 2)
            >>> original = "if u love rihanna subscribe me"
            >>> once = original + " love"  # the search inserted "love": the original holds one too
            >>> edits = space.candidates(once, original)
            >>> sorted({e.value[2] for e in edits if e.value[1] != "insert"})  # the inserted word (6) is not offered
            [0, 1, 2, 3, 4, 5]
            >>> bool(space.contains([space.apply(once, e) for e in edits], [original] * len(edits)).all())
            True
        """
        cost, free = _alignment(original, x, self.url_host_homoglyphs)
        if cost + 1 > self.limit(original):
            return []
        found = words(x)
        edits: list[Edit] = []
        for k, word in enumerate(found):
            if free[k]:  # not edited yet, nor inserted
                edits += _word_edits(k, word, self.seed, self.samples, self.url_host_homoglyphs, self.tricks)
        if "insert" in self.tricks:
            edits += _insert_edits(len(found), self.insert_words)
        return edits

    def apply(self, x: str, edit: Edit) -> str:
        # the text is built only for the edits a search tries: candidates() offers hundreds per text
        old, kind, index, new = edit.value
        spans = [m.span() for m in _WORD.finditer(x)]
        if kind == "insert":
            if index == len(spans):
                return x + " " + new
            cut = spans[index][0]
            return x[:cut] + new + " " + x[cut:]
        if index >= len(spans) or x[spans[index][0] : spans[index][1]] != old:
            raise ConfigError(f"edit {edit.value!r} does not fit {x!r}: apply an edit to the text candidates() gave "
                              "it for")
        start, end = spans[index]
        return x[:start] + new + x[end:]

    def scores(self, x: str, grad: torch.Tensor, edits: Sequence[Edit]) -> torch.Tensor:
        """HotFlip-style first-order estimates with the model's embedding table (if bound), else word saliency.

        With ``embedding`` (the model's table): a trick replacing a word's tokens by new ones scores
        ``sum <g_word, E[new]> - sum_p <g_p, E[old_p]>`` with ``g_word`` the mean gradient over the word's
        tokens (``sum_p <g_p, E[new_p] - E[old_p]>`` when the new word has as many tokens: a variant the
        model reads as the same tokens scores 0); an insertion scores ``sum <g_gap, E[new]>`` with
        ``g_gap`` the gradient at the first token after the gap (the last token for the end). Without
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
            mean, per = float(per_word.mean()), per_word.tolist()  # Python numbers: the list runs per edit
            return torch.tensor(
                [0.5 * mean if kind == "insert" else per[k] * _KIND_WEIGHT[kind] for _, kind, k, _ in
                 (e.value for e in edits)],
                device=grad.device,
            )
        ids = torch.tensor(enc.ids[:n], dtype=torch.long).clamp(0, len(table) - 1)
        current = (g * _rows(table, ids)).sum(dim=-1)
        # per word: the mean gradient over its tokens and the sum of <g_p, E[old_p]>; then the two edges
        n_words = len(spans)
        own = torch.tensor(owner, dtype=torch.long)
        mine = own >= 0
        # a (words x tokens) membership matrix: a 2-D index_add_ costs milliseconds on a busy CPU
        member = torch.zeros(n_words, n)
        member[own[mine], mine.nonzero().squeeze(1)] = 1.0
        counts = member.sum(dim=1)
        g_word = (member @ g) / counts.clamp_min(1)[:, None]
        old = member @ current
        # the token right after each gap (the last token after the last word): where an insertion lands
        after = [n - 1] * (n_words + 1)
        for p in range(n - 1, -1, -1):
            if owner[p] >= 0:
                after[owner[p]] = p
        n_tokens = counts.tolist()
        for k in range(n_words - 1, -1, -1):
            if n_tokens[k] == 0:
                after[k] = after[k + 1]
        # each word's token positions, padded with n (a zero gradient row appended to g)
        tokens: list[list[int]] = [[] for _ in range(n_words)]
        for p, k in enumerate(owner):
            if k >= 0:
                tokens[k].append(p)
        # the edits as tensors: one Python pass over them, then everything per edit is batched
        values = [e.value for e in edits]
        distinct = list(dict.fromkeys(v[3] for v in values))
        self._prefetch(distinct)
        new_ids = [self._word_ids(w) for w in distinct]
        slot = {w: i for i, w in enumerate(distinct)}
        insert = torch.tensor([v[1] == "insert" for v in values])
        k_of = torch.tensor([v[2] for v in values], dtype=torch.long)
        w_of = torch.tensor([slot[v[3]] for v in values], dtype=torch.long)
        lengths = torch.tensor([len(ids) for ids in new_ids], dtype=torch.long)
        used, local = torch.unique(torch.tensor([i for ids in new_ids for i in ids], dtype=torch.long)
                                   .clamp(0, len(table) - 1), return_inverse=True)
        rows = _rows(table, used)  # each distinct token row once: (tokens used, D)
        # pooled: <a gradient vector, the sum of the new tokens' rows> (the word's mean gradient; for an
        # insertion, the gradient of the token after the gap), from every vector x every distinct new word
        # products and one lookup per edit: no per-edit gathers, no (words x longest word x D) tensor
        first = torch.cumsum(lengths, 0) - lengths  # where each distinct word's tokens start in ``local``
        sums = torch.nn.functional.embedding_bag(local, rows, first, mode="sum")
        pooled_vectors = torch.cat([g_word, g[torch.tensor(after, dtype=torch.long)]])
        row = torch.where(insert, n_words + k_of.clamp(max=n_words), k_of.clamp(max=max(0, n_words - 1)))
        score = (pooled_vectors @ sums.T)[row, w_of]
        # token for token (a trick keeping the word's token count): each new token with its own gradient,
        # padded only to the longest word such a trick touches
        n_of = counts[k_of.clamp(max=max(0, n_words - 1))] if n_words else torch.zeros(len(values))
        aligned = ~insert & (lengths[w_of] == n_of)
        if bool(aligned.any()):
            a = aligned.nonzero().squeeze(1)
            width = int(n_of[a].max())
            fits = lengths <= width  # the distinct words an aligned edit can use, as local row indices
            new_local = torch.full((len(distinct), width), len(used), dtype=torch.long)
            column = torch.arange(width)
            inside = fits[:, None] & (column[None, :] < lengths[:, None])
            new_local[inside] = local[(first[:, None] + column[None, :])[inside]]
            positions = _padded([ts[:width] for ts in tokens], width, n)[0]
            g_pad = torch.cat([g, g.new_zeros(1, g.shape[1])])
            rows_pad = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
            score[a] = (g_pad[positions[k_of[a]]] * rows_pad[new_local[w_of[a]]]).sum(dim=(1, 2))
        # a trick takes the word's own tokens away; a trick on a word the model does not read scores 0
        trick = ~insert
        score[trick] -= old[k_of[trick]] if n_words else 0.0
        score[trick & (n_of == 0)] = 0.0
        return score.to(grad.device)

    def _prefetch(self, new_words: list[str]) -> None:
        """Tokenize the words not cached yet in one batch (a search offers hundreds of variants a text)."""
        missing = list(dict.fromkeys(w for w in new_words if w not in self._ids_cache))
        if not missing:
            return
        if len(self._ids_cache) + len(missing) > 100_000:
            self._ids_cache.clear()
        for w, enc in zip(missing, self.tokenizer.encode_batch([self.model_text(w) for w in missing]), strict=True):
            self._ids_cache[w] = enc.ids or [0]

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
            isinstance(a, str) and isinstance(o, str) and bool(o.strip())
            and edit_cost(o, a, url_host_homoglyphs=self.url_host_homoglyphs) <= self.limit(o)
            for a, o in zip(x_adv, x, strict=True)
        ]
        return torch.tensor(ok, dtype=torch.bool)

    def edited_share(self, x_adv: Sequence[str], x: Sequence[str]) -> list[float]:
        """Share of words edited (edits over the original's word count) per pair."""
        return [edit_cost(o, a, url_host_homoglyphs=self.url_host_homoglyphs) / max(1, len(words(o)))
                for a, o in zip(x_adv, x, strict=True)]
