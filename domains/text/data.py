"""Text data: the generated demo spam/ham corpus, the SMS Spam Collection reader and the splits.

The demo corpus is **generated** (no real messages): seeded templates filled with made-up URLs, phone
numbers, prices and call-to-action words for spam, and everyday phrases for ham. It exists so that
``quickstart`` and the tests run offline in seconds; its numbers say nothing about real spam.

Example:
    >>> texts, labels = demo_corpus(40, seed=0)
    >>> len(texts), sorted(set(labels))
    (40, [0, 1])
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from pathlib import Path

from robustkit.errors import DataError

__all__ = ["LABELS", "clean_texts", "demo_corpus", "read_sms_collection", "stratified_split"]

#: label names accepted in files, and the class index each stands for (1 = spam, the attacked class)
LABELS = {"ham": 0, "spam": 1, "0": 0, "1": 1}

_SPAM_OPENERS = [
    "URGENT!",
    "Congratulations!",
    "WINNER!!",
    "FREE entry:",
    "Final notice:",
    "Dear customer,",
    "You have been selected!",
    "Exclusive offer:",
    "Last chance!",
    "Good news!",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
]
_SPAM_BODIES = [
    "you have won a {prize} worth {price}",
    "claim your {prize} now for only {price}",
    "get a guaranteed {prize} for {price} this week only",
    "your account earned a cash bonus of {price}",
    "win a {prize} or {price} in cash today",
    "reply WIN to receive your {prize} and a {price} voucher",
    "you are guaranteed a {price} reward",
    "your mobile number was chosen for a {price} prize",
    "our records show you are owed {price} in compensation",
    "a free {prize} is waiting for you",
]
_SPAM_CALLS = [
    "call {phone} now",
    "text CLAIM to {short}",
    "visit {url} to claim",
    "click {url} today",
    "call {phone} to redeem",
    "reply YES to {short}",
    "go to {url} before midnight",
    "txt STOP to {short} to opt out",
    "call {phone}",
    "see {url}",
]
_PRIZES = ["holiday", "new phone", "gift card", "laptop", "cruise", "voucher", "car", "tablet"]
_DOMAINS = ["win-prize", "cashdeal", "freegift", "claimnow", "bonus-club", "luckydraw", "getdeals", "mobile-uk"]
_TLDS = ["com", "net", "biz", "co.uk"]

# ham shares the payload's kinds (numbers, prices, links, "call", "text") so that a filter must read
# the rest of the message, as with real SMS
_HAM = [
    "hey are we still on for {day} at {time}?",
    "can you pick up some {food} on the way home",
    "sorry i missed your call, {day} is fine for me",
    "i will be late, the {place} meeting ran over",
    "thanks for the {food} yesterday, it was lovely",
    "ok see you at the {place} around {time}",
    "did you remember to bring the {thing}?",
    "happy birthday! hope you have a great {day}",
    "mum says dinner is at {time}, do not be late",
    "just got home, the {place} was so busy today",
    "can we move our chat to {day}? something came up",
    "lol that was funny, tell me more at the {place}",
    "i left my {thing} at your place, can i get it {day}",
    "the train is delayed again, be there by {time}",
    "good luck with the exam tomorrow, you will do great",
    "are you coming to the {place} with us on {day}?",
    "call me when you get this, my new number is {phone}",
    "the tickets were {price} each, text me if you want one",
    "have a look at {url} for the train times",
    "i paid {price} for the {thing}, what a deal lol",
    "reply when you can, we are at the {place}",
    "won the quiz at the {place} last night! {price} bar tab",
    "can you call {phone} and book a table for {time}",
    "congratulations on the new job! drinks at the {place} on {day}",
    "urgent: can you call me back about the {thing}",
    "i won a {thing} in the office raffle, still cannot believe it",
    "got a cash refund of {price} for the {thing} today",
    "free {food} at the {place} if you are around, reply quick",
    "the {place} offer ends {day}, worth a look",
    "dear all, the {place} is closed on {day}, text me for details",
    "your parcel code is {short}, pick it up at the {place}",
    "booked the {place} for {day}, it was {price} in total, call me",
    "the new phone was {price} in the end, visit {url} for the deal",
    "to vote for the band text {short}, it costs {price}",
    "call {phone} to book the {place} for {day}, deposit is {price}",
    "reply to this and claim your seat for {day}, it is {price} each",
    "click {url} and order the {food} for {time}, i owe you {price}",
    "the {place} has a free {food} offer on {day}, fancy it?",
]
_HAM_SITES = [
    "www.bbc.co.uk",
    "www.nationalrail.co.uk",
    "www.google.com",
    "www.cinema-listings.com",
    "www.getdeals.com",
    "www.mobile-uk.net",
]
_DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "tonight", "tomorrow"]
_TIMES = ["6pm", "7", "half past five", "noon", "8ish", "10am"]
_FOOD = ["milk", "bread", "pizza", "cake", "coffee", "curry"]
_PLACES = ["office", "gym", "pub", "library", "station", "park", "cinema"]
_THINGS = ["keys", "charger", "umbrella", "book", "jacket", "laptop"]


def _phone(rng: random.Random) -> str:
    return "0" + str(rng.choice([7700, 7800, 800, 906])) + str(rng.randrange(100000, 999999))


def _spam(rng: random.Random) -> str:
    fill = {
        "prize": rng.choice(_PRIZES),
        "price": rng.choice(["£", "$"]) + str(rng.choice([50, 100, 250, 500, 1000, 2000])),
        "phone": _phone(rng),
        "short": str(rng.randrange(80000, 89999)),
        "url": f"www.{rng.choice(_DOMAINS)}.{rng.choice(_TLDS)}",
    }
    parts = [
        rng.choice(_SPAM_OPENERS),
        rng.choice(_SPAM_BODIES).format(**fill) + ".",
        rng.choice(_SPAM_CALLS).format(**fill) + ".",
    ]
    parts = [p for p in parts if p]
    if rng.random() < 0.15:
        parts.append(rng.choice(["T&Cs apply.", "Limited offer.", "Do not miss out!", "18+ only."]))
    return " ".join(parts)


def _ham(rng: random.Random) -> str:
    fill = {
        "day": rng.choice(_DAYS),
        "time": rng.choice(_TIMES),
        "food": rng.choice(_FOOD),
        "place": rng.choice(_PLACES),
        "thing": rng.choice(_THINGS),
        "phone": _phone(rng),
        "price": rng.choice(["£", "$"]) + str(rng.choice([5, 10, 20, 50, 100, 250, 500, 1000])),
        "url": rng.choice(_HAM_SITES),
        "short": str(rng.randrange(80000, 89999)),
    }
    text = rng.choice(_HAM).format(**fill)
    if rng.random() < 0.3:
        text += " " + rng.choice(_HAM).format(**fill)
    return text


def demo_corpus(n: int = 800, seed: int = 0, spam_share: float = 0.3) -> tuple[list[str], list[int]]:
    """``n`` generated messages (about ``spam_share`` spam), distinct texts, from seeded templates."""
    rng = random.Random(seed)
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    n_spam = round(n * spam_share)
    attempts = 0
    while len(texts) < n and attempts < 50 * n:
        attempts += 1
        label = 1 if sum(labels) < n_spam and rng.random() < spam_share * 1.5 else 0
        if label == 0 and len(texts) - sum(labels) >= n - n_spam:
            label = 1
        text = _spam(rng) if label else _ham(rng)
        if text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(label)
    return texts, labels


def clean_texts(texts: Sequence[str], where: str) -> list[str]:
    """Check texts: strings, not empty or whitespace-only (DataError naming the first bad one)."""
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"{where}: text {i} is {type(t).__name__}, not a string")
        if not t.strip():
            raise DataError(f"{where}: text {i} is empty or whitespace only: drop it or fill it in")
        out.append(t)
    return out


def parse_label(value: str, where: str) -> int:
    key = value.strip().lower()
    if key not in LABELS:
        raise DataError(f"{where}: unknown label {value!r}: use one of ham, spam (or 0, 1)")
    return LABELS[key]


def read_sms_collection(path: str | Path) -> tuple[list[str], list[int], str]:
    """The UCI SMS Spam Collection (``label<TAB>text`` per line): texts, labels and the file's sha256."""
    file = Path(path)
    if file.is_dir():
        file = file / "SMSSpamCollection"
    if not file.is_file():
        raise DataError(f"{file} does not exist: give the SMSSpamCollection file (label<TAB>text lines)")
    raw = file.read_bytes()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{file} is not UTF-8 (byte {exc.start} cannot be decoded): re-save it as UTF-8") from None
    texts: list[str] = []
    labels: list[int] = []
    for n, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        label, sep, text = line.partition("\t")
        where = f"{file.name} line {n}"
        if not sep:
            raise DataError(f"{where}: expected label<TAB>text, found no tab")
        labels.append(parse_label(label, where))
        texts.append(clean_texts([text], where)[0])
    if not texts:
        raise DataError(f"{file} holds no messages")
    return texts, labels, hashlib.sha256(raw).hexdigest()


def deduplicate(texts: Sequence[str], labels: Sequence[int]) -> tuple[list[str], list[int], int]:
    """Keep the first occurrence of every text; returns the texts, labels and how many were dropped."""
    seen: set[str] = set()
    out_t, out_l = [], []
    for t, y in zip(texts, labels, strict=True):
        if t in seen:
            continue
        seen.add(t)
        out_t.append(t)
        out_l.append(y)
    return out_t, out_l, len(texts) - len(out_t)


def stratified_split(
    labels: Sequence[int], seed: int, fractions: tuple[float, float] = (0.6, 0.2)
) -> tuple[list[int], list[int], list[int]]:
    """Indices of the train, validation and test splits, each class shuffled and cut by ``fractions``."""
    rng = random.Random(seed)
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for cls in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == cls]
        rng.shuffle(idx)
        a = round(len(idx) * fractions[0])
        b = a + round(len(idx) * fractions[1])
        for part, chunk in zip(parts, (idx[:a], idx[a:b], idx[b:]), strict=True):
            part.extend(chunk)
    for part in parts:
        part.sort()
    return parts
