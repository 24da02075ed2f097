"""Text data: the generated demo spam/ham corpus, the SMS Spam Collection reader and the splits.

The demo corpus is **generated** (no real messages): seeded templates filled with made-up URLs, phone
numbers, prices and call-to-action words for spam, and everyday phrases for ham. It exists so that
``quickstart`` and the tests run offline in seconds; its numbers say nothing about real spam. The
classes overlap on purpose, as real SMS does: half the ham is legitimate notifications with the shape
of spam (an opener, a body, a call to action with a link, number or short code), other ham uses spam's
words in everyday sentences, and most spam has no shouting opener. So an offer is told apart by a few
words, which a spammer's budget of edits can reach (with fully separable classes an obfuscation attack
never changes a decision, and hardening has nothing to show).

Files (``--data KIND:PATH``, see :func:`read_source`): ``sms:PATH`` (the UCI SMS Spam Collection,
``label<TAB>text`` lines), and ``csv:PATH``, ``tsv:PATH``, ``json:PATH`` (a JSON array of objects or
JSON lines) and ``parquet:PATH``, read with ``datasets.load_dataset`` from the local file only. Table
options: ``text_column`` (default ``text``), ``label_column`` (default ``label``; ``target`` is an alias)
and ``label_names`` (``[HAM, SPAM]``, default ``[ham, spam]``; ``0`` and ``1`` are always accepted,
case is ignored). Every reader:

* refuses bytes that are not UTF-8 (:class:`~robustkit.errors.DataError` with the line and byte);
* drops empty and whitespace-only texts (missing values too) with a counted warning;
* refuses an unknown label with a DataError naming it, its row and the allowed names;
* keeps the first of repeated texts (the SMS collection holds 403 repeats: a repeat in both the
  training and the test split would inflate test accuracy) and says how many it dropped, and how
  many of those carried another label.

Example:
    >>> texts, labels = demo_corpus(40, seed=0)
    >>> len(texts), sorted(set(labels))
    (40, [0, 1])
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustkit.errors import ConfigError, DataError

from .options import TextOptions

__all__ = [
    "LABELS",
    "TABLE_FORMATS",
    "TextSource",
    "clean_texts",
    "conflicting_repeats",
    "deduplicate",
    "demo_corpus",
    "read_sms_collection",
    "read_source",
    "read_table",
    "stratified_split",
    "truncation_note",
]

log = logging.getLogger("robustkit")

#: label names accepted in files, and the class index each stands for (1 = spam, the attacked class)
LABELS = {"ham": 0, "spam": 1, "0": 0, "1": 1}

_SPAM_OPENERS = [
    "URGENT!",
    "Congratulations!",
    "WINNER!!",
    "FREE entry:",
    "You have been selected!",
    # openers legitimate notifications use too, and greetings
    "Final notice:",
    "Dear customer,",
    "Exclusive offer:",
    "Last chance!",
    "Good news!",
    "hi,",
    "hey!",
    "hello,",
    *[""] * 20,
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
    # offers with few spam words
    "a {prize} is waiting for you",
    "you are owed {price}",
    "your number was picked this week",
    "your {prize} expires at midnight",
    "you qualify for a {price} refund",
    "we tried to reach you about your {prize}",
    "your parcel is on hold, a {price} fee is due",
    "you still have {price} to collect",
    "your entry in our draw was chosen",
    "meet singles near you tonight",
    "your account needs to be checked",
    "there is a {prize} with your name on it",
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
    # spam's words in everyday sentences
    "i won {price} on the {place} quiz lol",
    "the raffle prize at the {place} was a {thing}, call me",
    "did you claim the {thing} from lost property?",
    "cash only at the {place} on {day}",
    "you have been selected for the {place} team! well done",
    "bonus: they had free {food} at the {place}",
    "the voucher for the {place} expires {day}, use it",
    "reward yourself with some {food} after the exam",
    "congratulations! you passed, call me at {time}",
    "winner winner {food} dinner lol",
    "final notice from mum: bring the {thing} {day}",
    "urgent! where did you put the {thing}?",
    "you are owed {price} for the {food}, i will pay you {day}",
    "good news, the {thing} was found at the {place}",
    "my prize for finishing the run was a {thing}",
    "last chance to come to the {place} with us {day}",
]
# legitimate notifications (ham) in the shape of spam: opener, body, call to action with the payload
_NOTE_OPENERS = [
    "Good news!",
    "Final notice:",
    "Dear customer,",
    "Reminder:",
    "Hi,",
    "Last chance!",
    "Exclusive offer:",
]
_NOTE_BODIES = [
    "your {thing} order has shipped",
    "your appointment is confirmed for {day} at {time}",
    "your bill of {price} is ready to view",
    "your table at the {place} is booked for {time}",
    "your {thing} is ready to collect from the {place}",
    "members get 20% off {food} at the {place} this week",
    "your monthly statement is ready",
    "your refund of {price} has been paid",
    "your delivery will arrive {day} before {time}",
    "your {place} membership renews {day} for {price}",
]
_NOTE_CALLS = [
    "click {url} today",
    "go to {url} before midnight",
    "txt STOP to {short} to opt out",
    "reply YES to {short}",
    "call {phone}",
    "call {phone} to change it",
    "reply STOP to {short} to opt out",
    "visit {url} for details",
    "see {url}",
    "text YES to {short} to confirm",
    "click {url} to manage it",
    "call {phone} now",
    "txt HELP to {short}",
]
#: share of ham that is a legitimate notification
_NOTE_SHARE = 0.5
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
    if rng.random() < _NOTE_SHARE:
        opener = rng.choice(_NOTE_OPENERS) if rng.random() < 0.7 else ""
        parts = [opener, rng.choice(_NOTE_BODIES).format(**fill) + ".", rng.choice(_NOTE_CALLS).format(**fill) + "."]
        return " ".join(p for p in parts if p)
    text = rng.choice(_HAM).format(**fill)
    if rng.random() < 0.3:
        text += " " + rng.choice(_HAM).format(**fill)
    return text


#: the most messages ``demo:N`` generates (a bigger corpus belongs in a file)
MAX_DEMO = 100_000


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


def _decode(raw: bytes, file: Path) -> str:
    """``raw`` as UTF-8 (a byte-order mark is skipped), or a DataError with the line and byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{file} is not UTF-8: byte {exc.start} (0x{raw[exc.start]:02x}, line {line}) cannot be decoded; "
            "re-save the file as UTF-8"
        ) from None


def _warn_empty(empty: int, file: Path) -> None:
    if empty:
        log.warning("%s: %d empty or whitespace-only texts dropped", file.name, empty)


def _read_sms(path: str | Path) -> tuple[list[str], list[int], str, int]:
    """The SMS collection's texts, labels, sha256 and the number of empty texts dropped."""
    file = Path(path)
    if file.is_dir():
        file = file / "SMSSpamCollection"
    if not file.is_file():
        raise DataError(f"{file} does not exist: give the SMSSpamCollection file (label<TAB>text lines)")
    raw = file.read_bytes()
    content = _decode(raw, file)
    texts: list[str] = []
    labels: list[int] = []
    empty = 0
    for n, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        label, sep, text = line.partition("\t")
        where = f"{file.name} line {n}"
        if not sep:
            raise DataError(f"{where}: expected label<TAB>text, found no tab")
        y = parse_label(label, where)
        if not text.strip():
            empty += 1
            continue
        labels.append(y)
        texts.append(text)
    if not texts:
        detail = f" ({empty} empty or whitespace-only texts dropped)" if empty else ""
        raise DataError(f"{file} holds no messages{detail}")
    _warn_empty(empty, file)
    return texts, labels, hashlib.sha256(raw).hexdigest(), empty


def read_sms_collection(path: str | Path) -> tuple[list[str], list[int], str]:
    """The UCI SMS Spam Collection (``label<TAB>text`` per line): texts, labels and the file's sha256.

    Empty and whitespace-only texts are dropped with a counted warning.
    """
    texts, labels, sha, _ = _read_sms(path)
    return texts, labels, sha


#: ``--data KIND:PATH`` table formats: the ``datasets`` builder and its options
TABLE_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    "csv": ("csv", {"sep": ","}),
    "tsv": ("csv", {"sep": "\t"}),
    "json": ("json", {}),
    "parquet": ("parquet", {}),
}


def _label_map(label_names: Sequence[str]) -> dict[str, int]:
    if (
        isinstance(label_names, str)
        or len(label_names) != 2
        or not all(isinstance(n, str) and n.strip() for n in label_names)
        or label_names[0].strip().lower() == label_names[1].strip().lower()
    ):
        raise ConfigError(f"options.label_names must be two distinct names, [HAM, SPAM], got {label_names!r}")
    return {label_names[0].strip().lower(): 0, label_names[1].strip().lower(): 1, "0": 0, "1": 1}


def _label_key(value: Any) -> str | None:
    """A label value as a lower-case name: 1, 1.0, True and " Spam " become "1", "1", "1", "spam"."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip().lower()


def _load_table(kind: str, file: Path, columns: Sequence[str]) -> Any:
    """The file as a ``datasets.Dataset`` (built in a temporary cache from the local file only)."""
    import datasets
    from datasets.utils import logging as ds_logging

    builder, extra = TABLE_FORMATS[kind]
    if builder == "csv":  # every cell as read: no "NA"/"null" texts turned into missing values, no 007 -> 7
        extra = {**extra, "keep_default_na": False, "converters": {c: str for c in columns}}
    bars = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        with tempfile.TemporaryDirectory(prefix="robustkit-text-") as cache:
            table = datasets.load_dataset(
                builder, data_files=str(file), split="train", cache_dir=cache, keep_in_memory=True, **extra
            )
            return table.to_dict()
    except Exception as exc:  # datasets wraps the reader's error; report its cause in one line
        cause = exc.__cause__ or exc
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise DataError(f"{file} is not a readable {kind.upper()} file: {first[:300]}") from None
    finally:
        if bars:
            ds_logging.enable_progress_bar()


def _check_json_records(content: str, file: Path) -> None:
    """Refuse a JSON file that is not an array of objects, one object, or JSON lines of objects.

    Checked with Python's own parser before ``datasets`` reads the file: its JSON reader crashes the whole
    process on some other shapes (a first line ``null``).
    """
    try:
        whole = json.loads(content)
    except json.JSONDecodeError:  # JSON lines: one value per line
        records = []
        for n, line in enumerate(content.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{file} is not a readable JSON file: line {n}: {exc.msg}") from None
    else:
        records = whole if isinstance(whole, list) else [whole]
    for n, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise DataError(f"{file} is not a readable JSON file: record {n} is {json.dumps(record)[:40]}, not an "
                            "object: give an array of objects or JSON lines, one object per line")


def read_table(
    kind: str,
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] = ("ham", "spam"),
) -> tuple[list[str], list[int], str, int]:
    """Texts and labels of a CSV, TSV, JSON (array or lines) or Parquet file with a text and a label column.

    Returns the texts, labels (ham 0, spam 1), the file's sha256 and the number of empty or
    whitespace-only texts dropped (with a warning). Labels are ``label_names`` (``[HAM, SPAM]``) or 0/1.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "sms.csv"
        >>> _ = f.write_text('text,label\\nsee you at 6,ham\\n"WIN cash, call now",spam\\n', encoding="utf-8")
        >>> read_table("csv", f)[:2]
        (['see you at 6', 'WIN cash, call now'], [0, 1])
    """
    if kind not in TABLE_FORMATS:
        raise ConfigError(f"unknown table format {kind!r}: use one of {', '.join(TABLE_FORMATS)}")
    for option, column in (("text_column", text_column), ("label_column", label_column)):
        if not isinstance(column, str) or not column:
            raise ConfigError(f"options.{option} must be a column name, got {column!r}")
    if text_column == label_column:
        raise ConfigError(f"options.text_column and options.label_column are both {text_column!r}")
    names = _label_map(label_names)
    file = Path(path).expanduser()
    if not file.is_file():
        what = "is a folder, not a file" if file.is_dir() else "does not exist"
        raise DataError(f"{kind}:{file}: {file} {what}")
    raw = file.read_bytes()
    if kind != "parquet":
        content = _decode(raw, file)
        if kind == "json":
            _check_json_records(content, file)
    table = _load_table(kind, file, (text_column, label_column))
    for option, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in table:
            found = ", ".join(map(repr, table)) or "none"
            raise DataError(f"{file.name} has no column {column!r} (options.{option}); its columns: {found}")
    allowed = ", ".join(dict.fromkeys(names))
    texts: list[str] = []
    labels: list[int] = []
    empty = 0
    for row, (text, value) in enumerate(zip(table[text_column], table[label_column], strict=True), start=1):
        key = _label_key(value)
        if not key:
            raise DataError(f"{file.name} row {row}: no label in column {label_column!r}: allowed are {allowed}")
        if key not in names:
            raise DataError(
                f"{file.name} row {row}: unknown label {value!r} in column {label_column!r}: allowed are {allowed} "
                "(set options.label_names to [HAM, SPAM] for other names)"
            )
        if isinstance(text, list | dict):
            raise DataError(f"{file.name} row {row}: the text in column {text_column!r} is a {type(text).__name__}, "
                            "not a string")
        if text is None or not str(text).strip():
            empty += 1
            continue
        texts.append(str(text))
        labels.append(names[key])
    if not texts:
        detail = f" ({empty} empty or whitespace-only texts dropped)" if empty else ""
        raise DataError(f"{file} holds no texts{detail}")
    _warn_empty(empty, file)
    return texts, labels, hashlib.sha256(raw).hexdigest(), empty


def deduplicate(texts: Sequence[str], labels: Sequence[int]) -> tuple[list[str], list[int], int]:
    """Keep the first occurrence of every text; returns the texts, labels and how many were dropped.

    Example:
        >>> deduplicate(["hi", "win", "hi"], [0, 1, 0])
        (['hi', 'win'], [0, 1], 1)
    """
    seen: set[str] = set()
    out_t, out_l = [], []
    for t, y in zip(texts, labels, strict=True):
        if t in seen:
            continue
        seen.add(t)
        out_t.append(t)
        out_l.append(y)
    return out_t, out_l, len(texts) - len(out_t)


def conflicting_repeats(texts: Sequence[str], labels: Sequence[int]) -> int:
    """How many repeated texts carry another label than their first occurrence (dropped by :func:`deduplicate`)."""
    first: dict[str, int] = {}
    conflicts = 0
    for t, y in zip(texts, labels, strict=True):
        if t in first:
            conflicts += first[t] != y
        else:
            first[t] = y
    return conflicts


@dataclass
class TextSource:
    """Texts and labels read from a data spec, deduplicated, with what :class:`DatasetInfo` says of them.

    Attributes:
        texts, labels: the messages and their classes (ham 0, spam 1), repeats dropped.
        name, sha256: the data set's name and the file's content hash (None for generated data).
        notes: what was done to the data (generation seed, rows dropped), for the split description.
        vocab_size: default vocabulary size of a tokenizer trained on these texts.
    """

    texts: list[str]
    labels: list[int]
    name: str
    sha256: str | None = None
    notes: list[str] = field(default_factory=list)
    vocab_size: int = 4000


def read_source(spec: str, seed: int, options: TextOptions | None = None) -> TextSource:
    """The texts of a data spec: ``demo``, ``demo:N``, ``sms``, ``sms:PATH``, ``csv:PATH``, ``tsv:PATH``,
    ``json:PATH`` or ``parquet:PATH`` (table options: see the module docstring). Files are deduplicated.

    Example:
        >>> source = read_source("demo:40", seed=0)
        >>> len(source.texts), source.name, source.notes
        (40, 'demo', ['generated with seed 0'])
    """
    kind, _, arg = spec.partition(":")
    if kind == "demo":
        n = 800
        if arg:
            try:
                n = int(arg)
            except ValueError:
                raise ConfigError(f"demo:N takes a number of messages, got {arg!r}") from None
            if not 20 <= n <= MAX_DEMO:
                raise ConfigError(f"demo:N takes 20 to {MAX_DEMO} messages, got {n}")
        texts, labels = demo_corpus(n, seed=seed)
        return TextSource(texts, labels, "demo", None, [f"generated with seed {seed}"], vocab_size=1000)
    if kind == "sms":
        root = os.environ.get("ROBUSTKIT_DATA")
        if not arg and not root:
            raise ConfigError("--data sms needs a path (sms:PATH) or ROBUSTKIT_DATA set")
        path = arg or os.path.join(root or "", "sms_spam_collection")
        texts, labels, sha, empty = _read_sms(path)
        name = "sms_spam_collection"
    elif kind in TABLE_FORMATS:
        if not arg.strip():
            raise ConfigError(f"--data {kind}:PATH needs the path of a {kind.upper()} file")
        texts, labels, sha, empty = read_table(kind, arg.strip(), **(options or TextOptions()).columns())
        name = Path(arg.strip()).stem
    else:
        formats = ", ".join(f"{k}:PATH" for k in TABLE_FORMATS)
        raise ConfigError(f"unknown text data {spec!r}: use demo, demo:N, sms, sms:PATH, {formats}")
    notes = [f"{empty} empty or whitespace-only texts dropped"] if empty else []
    conflicts = conflicting_repeats(texts, labels)
    texts, labels, dropped = deduplicate(texts, labels)
    detail = f" ({conflicts} of them labelled differently: the first label kept)" if conflicts else ""
    notes.append(f"{dropped} duplicate texts dropped{detail}")
    if dropped:
        log.info("%s: %d duplicate texts dropped before splitting%s", name, dropped, detail)
    return TextSource(texts, labels, name, sha, notes)


def truncation_note(truncated: int, limit: int) -> str | None:
    """Say (a warning, and the note returned for the split description) how many texts the model truncates."""
    if not truncated:
        return None
    note = f"{truncated} texts longer than {limit} tokens truncated"
    log.warning("%s: the model reads only their first %d tokens", note, limit)
    return note


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
