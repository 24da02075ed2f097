"""A defensive normaliser: undo the spammer tricks that leave a message reading the same to a person.

Applied, in this order, to every word (run of non-space characters):

1. Unicode NFKC (full-width and mathematical letters, ligatures and the like become plain letters);
2. invisible characters removed (Unicode format characters, category ``Cf``: zero-width space,
   joiners, word joiner, byte-order mark, soft hyphen, direction marks);
3. confusables folded back to their Latin letter, with the homoglyph table the obfuscation space
   uses (:data:`domains.text.obfuscation.HOMOGLYPHS`), only in words that become all-Latin (so a
   word really written in Cyrillic stays as it is);
4. separator tricks undone: two or more single letters joined by one repeated separator
   (``f.r.e.e``, ``f-r-e-e``, ``f*r*e*e``, ``f_r_e_e``) become one word; URLs are left alone.

Then runs of four or more single letters separated by single spaces (``f r e e``) are joined (three
are not: ``u r a`` is SMS shorthand). Case is kept. Leetspeak is **not** folded: it would corrupt the
numbers, prices and codes that are the strongest spam signal.

Example:
    >>> normalise("F.R.E.E entry! \u0441l\u0430im at www.win-prize.com or c\u200ball 09061234567 for £500")
    'FREE entry! claim at www.win-prize.com or call 09061234567 for £500'
    >>> normalise("g o o d n i g h t, u r a star, fr33 £5OO")
    'goodnight, u r a star, fr33 £5OO'
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from .obfuscation import HOMOGLYPHS, payload_kind

__all__ = ["normalise", "normalise_aligned"]

_UNGLYPH = {glyph: latin for latin, glyph in HOMOGLYPHS.items()}
_WORD = re.compile(r"\S+")
_LETTER = r"[^\W\d_]"
#: two or more single letters joined by one repeated separator, not inside a longer word or number
_SEPARATED = re.compile(rf"(?<![^\W_]){_LETTER}([.\-*_·•~])(?:{_LETTER}\1)*{_LETTER}(?![^\W_])")
_SPACED_FIRST = re.compile(rf"[^\w\s]*{_LETTER}")
_SPACED_LAST = re.compile(rf"{_LETTER}[^\w\s]*")
#: fewest single letters separated by spaces that are joined into one word
MIN_SPACED_LETTERS = 4


def _latin(ch: str) -> bool:
    return not ch.isalpha() or ch.isascii() or unicodedata.name(ch, "").startswith("LATIN")


@lru_cache(maxsize=65536)
def _word(word: str) -> str:
    """One word with NFKC, invisible characters, confusables and separators undone."""
    out = "".join(ch for ch in unicodedata.normalize("NFKC", word) if unicodedata.category(ch) != "Cf")
    folded = "".join(_UNGLYPH.get(ch, ch) for ch in out)
    if folded != out and all(_latin(ch) for ch in folded):
        out = folded
    if payload_kind(out) != "url":
        out = _SEPARATED.sub(lambda m: m.group(0).replace(m.group(1), ""), out)
    return out


def _spaced_run(text: str, spans: list[tuple[int, int, str]], k: int) -> int:
    """Index of the last word of the run of single letters separated by one space that starts at word
    ``k`` (``k`` itself if there is none); the first may have punctuation before, the last after."""
    if not _SPACED_FIRST.fullmatch(spans[k][2]):
        return k
    run = k
    while run + 1 < len(spans) and text[spans[run][1] : spans[run + 1][0]] == " ":
        nxt = spans[run + 1][2]
        if not _SPACED_LAST.fullmatch(nxt):
            break
        run += 1
        if len(nxt) > 1:  # punctuation after the letter ends the run
            break
    return run


def normalise_aligned(text: str) -> tuple[str, list[int]]:
    """The normalised text and, for each of its characters, the index of the word of ``text`` it comes
    from (-1 for the spaces between words): what lets an attack map model gradients back to words.

    Example:
        >>> normalise_aligned("w i n n e r! c\u200ball now")
        ('winner! call now', [0, 1, 2, 3, 4, 5, 5, -1, 6, 6, 6, 6, -1, 7, 7, 7])
    """
    spans = [(m.start(), m.end(), _word(m.group())) for m in _WORD.finditer(text)]
    chars: list[str] = []
    owners: list[int] = []
    cursor = 0
    k = 0
    while k < len(spans):
        start, end, word = spans[k]
        run = _spaced_run(text, spans, k)
        gap = text[cursor:start]
        chars.append(gap)
        owners.extend([-1] * len(gap))
        if run - k + 1 >= MIN_SPACED_LETTERS:
            for j in range(k, run + 1):
                chars.append(spans[j][2])
                owners.extend([j] * len(spans[j][2]))
            cursor, k = spans[run][1], run + 1
            continue
        if not word:  # a word made only of invisible characters: dropped with the space before it
            if gap:
                del chars[-1]
                del owners[len(owners) - len(gap) :]
            cursor, k = end, k + 1
            continue
        chars.append(word)
        owners.extend([k] * len(word))
        cursor, k = end, k + 1
    tail = text[cursor:]
    chars.append(tail)
    owners.extend([-1] * len(tail))
    out = "".join(chars)
    assert len(out) == len(owners)
    return out, owners


def normalise(text: str) -> str:
    """``text`` with homoglyphs, invisible characters and separator tricks undone (see the module docs).

    Example:
        >>> normalise("WINN\u0415R! c.l.a.i.m your pr\u200bize")
        'WINNER! claim your prize'
    """
    return normalise_aligned(text)[0]
