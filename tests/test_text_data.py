"""Text data files: csv/tsv/json/json lines/parquet through ``datasets`` (local files only), and bad inputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import robustkit as rk
from domains.text import TextDomain, TextOptions
from domains.text.data import demo_corpus, read_source, read_table

FORMATS = ["csv", "tsv", "json", "jsonl", "parquet"]


def rows(n: int = 40) -> list[dict[str, Any]]:
    """``n`` distinct demo messages, then a repeat, a repeat labelled otherwise and two empty texts."""
    texts, labels = demo_corpus(n, seed=0)
    out: list[dict[str, Any]] = [{"text": t, "label": ["ham", "spam"][y]} for t, y in zip(texts, labels, strict=True)]
    out[1]["label"] = "1" if labels[1] else "0"  # 0/1 work beside the names
    out[2]["label"] = out[2]["label"].upper()  # case is ignored
    other = "ham" if labels[3] else "spam"
    out += [dict(out[0]), {"text": texts[3], "label": other}]
    out += [{"text": "", "label": "ham"}, {"text": " \t ", "label": "spam"}]
    return out


def write(path: Path, kind: str, records: list[dict[str, Any]]) -> str:
    """Write ``records`` as ``kind`` and return the data spec."""
    frame = pd.DataFrame(records)
    if kind == "csv":
        frame.to_csv(path, index=False)
    elif kind == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif kind == "json":
        path.write_text(json.dumps(records), encoding="utf-8")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        kind = "json"
    else:
        frame.to_parquet(path, index=False)
    return f"{kind}:{path}"


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_reads_deduplicates_and_drops_empty_texts(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    spec = write(tmp_path / f"sms.{kind}", kind, rows())
    with caplog.at_level(logging.INFO, logger="robustkit"):
        source = read_source(spec, seed=0)
    texts, labels = demo_corpus(40, seed=0)
    assert source.texts == texts and source.labels == labels and len(source.sha256 or "") == 64
    assert source.notes == [
        "2 empty or whitespace-only texts dropped",
        "2 duplicate texts dropped (1 of them labelled differently: the first label kept)",
    ]
    assert "2 empty or whitespace-only texts dropped" in caplog.text and "2 duplicate texts dropped" in caplog.text
    data = TextDomain().load_data(spec, seed=0, options=TextOptions())
    assert len(data.train) + len(data.val) + len(data.test) == 40
    assert data.info.name == "sms" and "2 duplicate texts dropped" in data.info.split


def test_column_and_label_names_are_options(tmp_path: Path) -> None:
    names = {"ham": "legit", "spam": "junk", "0": "legit", "1": "junk"}
    records = [
        {"id": i, "message": r["text"], "category": names[r["label"].lower()]} for i, r in enumerate(rows()[:40])
    ]
    spec = write(tmp_path / "mail.csv", "csv", records)
    options = TextOptions(text_column="message", label_column="category", label_names=["Legit", "Junk"])
    expected = demo_corpus(40, seed=0)
    assert (read_source(spec, 0, options).texts, read_source(spec, 0, options).labels) == expected
    target = TextOptions(text_column="message", target="category", label_names=["legit", "junk"])  # --target
    assert read_source(spec, 0, target).labels == expected[1]
    unknown = r"row 1: unknown label 'legit' in column 'category': allowed are ham, spam, 0, 1"
    with pytest.raises(rk.DataError, match=unknown):
        read_source(spec, 0, TextOptions(text_column='message', label_column='category'))
    with pytest.raises(rk.DataError, match=r"no column 'text' \(options.text_column\); its columns: 'id', 'message'"):
        read_source(spec, 0, TextOptions())
    with pytest.raises(rk.ConfigError, match="label_names"):
        read_source(spec, 0, TextOptions(text_column='message', label_column='category', label_names=['a', 'A']))


def test_csv_cells_stay_text(tmp_path: Path) -> None:
    file = tmp_path / "odd.csv"
    file.write_text('text,label\nNA,ham\n007,spam\nnull,0\n"a, b\nc",1\n', encoding="utf-8")
    assert read_table("csv", file)[:2] == (["NA", "007", "null", "a, b\nc"], [0, 1, 0, 1])


@pytest.mark.parametrize(
    ("kind", "content", "message"),
    [
        ("csv", b"text,label\nhi,ham\nbad \xff byte,spam\n", r"not UTF-8: byte 22 \(0xff, line 3\)"),
        ("json", b'{"text": "hi", "label": 0}\n{"text": \n', "not a readable JSON file"),
        ("csv", b"text,label\nhi,maybe\n", r"row 1: unknown label 'maybe'.*allowed are ham, spam, 0, 1"),
        ("json", b'{"text": "hi", "label": null}\n', "row 1: no label"),
        ("tsv", b"text\tlabel\n \tham\n\tspam\n", r"holds no texts \(2 empty or whitespace-only texts dropped\)"),
    ],
)
def test_bad_files_are_data_errors(tmp_path: Path, kind: str, content: bytes, message: str) -> None:
    file = tmp_path / f"bad.{kind}"
    file.write_bytes(content)
    with pytest.raises(rk.DataError, match=message):
        TextDomain().load_data(f"{kind}:{file}", seed=0, options=TextOptions())


def test_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(rk.DataError, match="does not exist"):
        read_source(f"csv:{tmp_path / 'missing.csv'}", 0)
    with pytest.raises(rk.ConfigError, match="needs the path"):
        read_source("parquet:", 0)
    with pytest.raises(rk.ConfigError, match="csv:PATH, tsv:PATH, json:PATH, parquet:PATH"):
        read_source("xlsx:file.xlsx", 0)
    one_class = write(tmp_path / "ham.csv", "csv", [{"text": f"hi {i}", "label": "ham"} for i in range(30)])
    with pytest.raises(rk.DataError, match="only one class"):
        TextDomain().load_data(one_class, seed=0, options=TextOptions())


def test_long_texts_are_truncated_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    records = rows()[:40]
    for r in records[:3]:
        r["text"] = " ".join([r["text"]] * 30)  # far past 128 tokens
    spec = write(tmp_path / "long.jsonl", "jsonl", records)
    with caplog.at_level(logging.WARNING, logger="robustkit"):
        data = TextDomain().load_data(spec, seed=0, options=TextOptions())
    assert "3 texts longer than 128 tokens truncated" in data.info.split
    assert "3 texts longer than 128 tokens truncated: the model reads only their first 128 tokens" in caplog.text


def test_sms_reader_drops_empty_texts_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    file = tmp_path / "SMSSpamCollection"
    texts, labels = demo_corpus(30, seed=0)
    lines = [f"{['ham', 'spam'][y]}\t{t}" for t, y in zip(texts, labels, strict=True)]
    lines += ["ham\t  ", f"{['spam', 'ham'][labels[0]]}\t{texts[0]}"]  # an empty text, a repeat labelled otherwise
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="robustkit"):
        source = read_source(f"sms:{file}", 0)
    assert (source.texts, source.labels) == (texts, labels)
    assert source.notes == [
        "1 empty or whitespace-only texts dropped",
        "1 duplicate texts dropped (1 of them labelled differently: the first label kept)",
    ]
    assert "SMSSpamCollection: 1 empty or whitespace-only texts dropped" in caplog.text
