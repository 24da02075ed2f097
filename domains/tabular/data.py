"""Tabular data from files: CSV and Parquet under a schema file, checked column by column, then split.

Data specs: ``csv:PATH`` (any compression pandas infers from the name, e.g. ``claims.csv.gz``) and
``parquet:PATH`` (needs ``pyarrow``, the ``parquet`` extra). The schema file is a
:class:`~domains.tabular.schema.Schema` YAML with one more key, ``drop``: columns of the file that are
not features (identifiers such as a policy number, or a time column used only to split).

Every check runs before any training and names the column: a missing file, columns missing from or
not declared by the schema, non-numeric text in numeric columns, missing values (with their count),
categories the schema does not list, a target that is not 0/1 with both classes, bounds that exclude
the data, and a split part that lacks a class. Text cells of categorical columns are read as they
are: ``NA`` or ``None`` stay categories; only empty cells are missing.

Splits (60/20/20): ``stratified`` (default, seeded, per class) or ``time``: train on the earliest
rows, validate on the next, test on the most recent, ordered by ``time_columns`` (numbers, ISO dates,
or month names such as ``Jan`` in calendar order). The cuts fall between distinct times, so every
train row is strictly earlier than every validation row, and those than every test row.

Example:
    >>> import tempfile
    >>> from domains.tabular.synthetic import card_schema, generate
    >>> folder = Path(tempfile.mkdtemp())
    >>> generate(500, seed=0).to_csv(folder / "cards.csv", index=False)
    >>> schema = folder / "schema.yaml"
    >>> _ = schema.write_text(card_schema().dump())
    >>> data = load("csv:" + str(folder / "cards.csv"), seed=0, schema=schema)
    >>> len(data.train), len(data.val), len(data.test)
    (299, 100, 101)
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import logging
import lzma
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

from domains.tabular.schema import Schema, _is_file
from domains.tabular.space import encode
from robustkit.domain import DatasetInfo, DomainData
from robustkit.errors import ConfigError, DataError
from robustkit.evaluation.binary import positive_label

__all__ = ["FRACTIONS", "SPLITS", "frame_data", "labels", "load", "month_number", "parse_spec", "read_schema",
           "read_table", "stratified_split", "time_key", "time_split"]

log = logging.getLogger("robustkit")

#: train, validation and test shares of both splits
FRACTIONS = (0.6, 0.2, 0.2)
SPLITS = ("stratified", "time")
FORMATS = ("csv", "parquet")
#: text read as missing in numeric and other non-categorical columns (categorical columns: only empty cells)
MISSING_TEXT = ["", "NA", "N/A", "n/a", "NaN", "nan", "-nan", "NULL", "null", "None", "#N/A", "<NA>"]
_MONTHS = {name: i + 1 for i, name in enumerate(
    ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november",
     "december"])}
_MONTHS.update({name[:3]: i for name, i in list(_MONTHS.items())})
_MONTHS["sept"] = 9


# ----------------------------------------------------------------------------- specs and files
def parse_spec(spec: str) -> tuple[str, Path]:
    """Split a data spec ``csv:PATH`` or ``parquet:PATH`` into its format and path.

    Example:
        >>> parse_spec("csv:claims/2024.csv.gz")
        ('csv', PosixPath('claims/2024.csv.gz'))
    """
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in FORMATS or not rest:
        raise ConfigError(f"the tabular domain reads --data synthetic, csv:PATH or parquet:PATH, not {spec!r}")
    return kind, Path(rest).expanduser()


def read_schema(source: str | Path) -> tuple[Schema, list[str]]:
    """A schema file (path or YAML text) and its ``drop`` list (columns that are not features).

    Example:
        >>> schema, drop = read_schema("drop: [id]\\ncolumns:\\n  age: {type: integer, lower: 18}\\n")
        >>> schema.names, drop
        (['age'], ['id'])
    """
    text = str(source)
    if isinstance(source, Path) or "\n" not in text:
        path = Path(text).expanduser()
        if not _is_file(path):
            raise ConfigError(f"schema file {path} does not exist (options.schema / --schema)")
        source = path
    schema = Schema.load(source)
    return schema, list(schema.drop)


def _need_parquet_engine() -> None:
    for module in ("pyarrow", "fastparquet"):
        try:
            importlib.import_module(module)
            return
        except ImportError:
            continue
    raise ConfigError("reading parquet:PATH needs the package pyarrow, which is not installed: "
                      "pip install -c constraints.txt pyarrow (or the extra robustkit[parquet] from the checkout), "
                      "or convert the file to CSV")


def read_table(kind: str, path: Path, schema: Schema | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file; categorical columns of ``schema`` are read as text, as written.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "t.csv"
        >>> _ = p.write_text("region,n\\nNA,1\\nEU,\\n")
        >>> read_table("csv", p, read_schema("columns:\\n  region: {type: categorical, categories: [NA, EU]}\\n"
        ...                                   "  n: {type: integer}\\n")[0]).to_dict("list")
        {'region': ['NA', 'EU'], 'n': [1.0, nan]}
    """
    if not path.exists():
        raise DataError(f"data file {path} does not exist (--data {kind}:PATH)")
    if kind == "csv" and not path.is_file():
        raise DataError(f"{path} is not a file: --data csv:PATH reads one CSV file")
    categorical = {c.name for c in schema.columns if not c.numeric} if schema is not None else set()
    if kind == "parquet":
        _need_parquet_engine()
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        header = pd.read_csv(path, nrows=0).columns
        na = {name: [""] if name in categorical else MISSING_TEXT for name in header}
        return pd.read_csv(path, dtype={name: str for name in header if name in categorical},
                           keep_default_na=False, na_values=na)
    except pd.errors.EmptyDataError:
        raise DataError(f"data file {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError, EOFError, zlib.error, lzma.LZMAError,
            zipfile.BadZipFile) as exc:  # the last four: a truncated or damaged compressed file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {path} as {kind}: {first}") from None


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- checks
def _check_columns(df: pd.DataFrame, schema: Schema, drop: Sequence[str], time_columns: Sequence[str]) -> None:
    """Columns of ``df`` against the schema, the drop list and the time columns."""
    if len(df) == 0:
        raise DataError("the data has no rows")
    names = [str(n) for n in df.columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"the data has column {dupes[0]!r} twice")
    absent = [d for d in drop if d not in names]
    if absent:
        raise DataError(f"the schema drops column {absent[0]!r} that the data does not have: "
                        f"remove it from drop (the data has {', '.join(names)})")
    if schema.target is not None and schema.target not in names:
        raise DataError(f"the data has no target column {schema.target!r}: set --target COLUMN "
                        f"(options.target) or target: in the schema to one of {', '.join(names)}")
    missing = [n for n in schema.names if n not in names]
    if missing:
        raise DataError(f"the data lacks column {missing[0]!r} that the schema declares"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    known = {*schema.names, *drop, schema.target}
    extra = [n for n in names if n not in known]
    if extra:
        raise DataError(f"the data has column{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))} that the "
                        "schema does not declare: add each to the schema's columns (mutable: false if the attacker "
                        "cannot change it) or to its drop list (identifiers, columns that are not features)")
    for name in time_columns:
        if name not in names:
            raise DataError(f"time column {name!r} (options.time_columns) is not in the data")
        if name == schema.target:
            raise ConfigError(f"time column {name!r} is the target")


def _check_numeric_text(df: pd.DataFrame, schema: Schema) -> None:
    """Name the first cell of a numeric column that is text, not a number."""
    for c in schema.columns:
        s = df[c.name]
        if not c.numeric or pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            continue
        bad = s.notna() & pd.to_numeric(s, errors="coerce").isna()
        if bad.any():
            first = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"column {c.name!r} is {c.type} but holds {int(bad.sum())} non-numeric values "
                            f"(first {s.iloc[first]!r} in data row {first + 1}): fix the data or declare the "
                            "column categorical")


def labels(df: pd.DataFrame, target: str, positive: Any = None) -> np.ndarray:
    """The target column as int64 0/1 (1: fraud); a :class:`DataError` naming it otherwise.

    Fraud is ``positive`` (``--positive-label``, options.positive_label) when given, else 1 of 0/1, True, or
    "fraud" (any case); any other pair of labels is refused with both named, never guessed
    (:func:`robustkit.evaluation.binary.positive_label`).

    Example:
        >>> labels(pd.DataFrame({"fraud": [0, 1, 1]}), "fraud").tolist()
        [0, 1, 1]
        >>> labels(pd.DataFrame({"y": ["legit", "fraud", "legit"]}), "y").tolist()
        [0, 1, 0]
    """
    y = df[target]
    if y.isna().any():
        raise DataError(f"target column {target!r} has {int(y.isna().sum())} missing values: fill or drop those rows")
    values = pd.unique(y)
    if len(values) > 2:
        shown = sorted(str(v) for v in values)[:5]
        raise DataError(f"target column {target!r} must hold two labels (legit and fraud), got {len(values)}: {shown}")
    if len(values) == 1 and positive is None:
        only = values[0].item() if isinstance(values[0], np.generic) else values[0]
        return np.full(len(y), int(only == 1 or str(only).strip().lower() == "fraud"), dtype=np.int64)
    try:
        pos = positive_label(list(values), positive, ("legit", "fraud"))
    except DataError as exc:
        raise DataError(f"target column {target!r}: {exc}") from None
    return np.asarray(y.to_numpy() == pos, dtype=np.int64)


# ----------------------------------------------------------------------------- time order
def month_number(value: Any) -> int | None:
    """The calendar number of a month name (``Jan``, ``january``, ``Sept``); None if it is not one.

    Example:
        >>> month_number("Dec"), month_number("March"), month_number("0")
        (12, 3, None)
    """
    return _MONTHS.get(str(value).strip().lower().rstrip("."))


def _column_order(s: pd.Series, name: str) -> np.ndarray:
    """One time column as floats that sort in time order."""
    if s.isna().any():
        raise DataError(f"time column {name!r} has {int(s.isna().sum())} missing values")
    if pd.api.types.is_bool_dtype(s):
        return s.to_numpy(dtype=float)
    if pd.api.types.is_numeric_dtype(s):
        return s.to_numpy(dtype=float)
    if pd.api.types.is_datetime64_any_dtype(s):
        dt = pd.to_datetime(s, utc=True)
        return ((dt - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)
    text = s.astype(str)
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers.notna().all():
        return numbers.to_numpy(dtype=float)
    months = text.map(month_number)
    if months.notna().all():
        return months.to_numpy(dtype=float)
    try:
        dt = pd.to_datetime(text, format="ISO8601", utc=True)
    except (ValueError, TypeError):
        neither = text[months.isna() & numbers.isna()]
        what = (f"holds {neither.iloc[0]!r}, which is neither a number, an ISO date (2024-01-31) nor a month name"
                if len(neither) else f"mixes numbers ({text[numbers.notna()].iloc[0]!r}) and month names "
                f"({text[months.notna()].iloc[0]!r})")
        raise DataError(f"time column {name!r} {what}: choose other time_columns or fix the data") from None
    return ((dt - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)


def time_key(df: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Sort keys, shape (rows, len(columns)): the first column orders first (e.g. Year, then Month).

    Example:
        >>> time_key(pd.DataFrame({"Year": [1995, 1994], "Month": ["Jan", "Dec"]}), ["Year", "Month"]).tolist()
        [[1995.0, 1.0], [1994.0, 12.0]]
    """
    return np.stack([_column_order(df[c], c) for c in columns], axis=1)


def _check_classes(parts: dict[str, np.ndarray], y: np.ndarray, how: str) -> None:
    for part, idx in parts.items():
        counts = np.bincount(y[idx], minlength=2)
        if len(idx) == 0 or counts.min() == 0:
            raise DataError(f"the {how} split leaves the {part} part with {counts[0]} legit and {counts[1]} fraud "
                            "rows: each part needs both classes"
                            + (" (try split: stratified, or more data)" if how == "time" else " (more data needed)"))


def stratified_split(y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Row indices of train, val and test: 60/20/20 within each class, seeded; each part sorted.

    Example:
        >>> parts = stratified_split(np.array([0] * 8 + [1] * 7), seed=0)
        >>> [len(parts[k]) for k in ("train", "val", "test")]
        [8, 3, 4]
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == cls))
        a, b = int(FRACTIONS[0] * len(idx)), int((FRACTIONS[0] + FRACTIONS[1]) * len(idx))
        parts["train"] += idx[:a].tolist()
        parts["val"] += idx[a:b].tolist()
        parts["test"] += idx[b:].tolist()
    out = {k: np.asarray(sorted(v), dtype=np.int64) for k, v in parts.items()}
    _check_classes(out, y, "stratified")
    return out


def time_split(key: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Row indices of train (earliest ~60%), val (next ~20%) and test (latest); cuts fall between times.

    Rows sharing a time always land in the same part. Each part keeps the rows' original order.

    Example:
        >>> key = np.array([[3.0], [1.0], [2.0], [1.0], [3.0], [2.0]])
        >>> {k: v.tolist() for k, v in time_split(key, np.array([1, 0, 1, 1, 0, 0])).items()}
        {'train': [1, 3], 'val': [2, 5], 'test': [0, 4]}
    """
    n = len(key)
    order = np.lexsort(key.T[::-1])  # stable; the first column is the primary key
    ordered = key[order]
    starts = np.flatnonzero(np.any(ordered[1:] != ordered[:-1], axis=1)) + 1  # where a new time begins
    if len(starts) < 2:
        raise DataError(f"the time columns hold only {len(starts) + 1} distinct times: a time split needs at least 3")
    a_at = int(np.argmin(np.abs(starts[:-1] - FRACTIONS[0] * n)))
    later = starts[a_at + 1:]
    a, b = int(starts[a_at]), int(later[np.argmin(np.abs(later - (FRACTIONS[0] + FRACTIONS[1]) * n))])
    out = {k: np.sort(order[s]) for k, s in (("train", slice(0, a)), ("val", slice(a, b)), ("test", slice(b, n)))}
    _check_classes(out, y, "time")
    return out


# ----------------------------------------------------------------------------- assembly
def _time_columns(value: Any) -> list[str]:
    columns = [value] if isinstance(value, str) else value
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) and c for c in columns):
        raise ConfigError(f"options.time_columns must be a column name or a list of them, got {value!r}")
    if len(set(columns)) != len(columns):
        raise ConfigError(f"options.time_columns repeats a column: {columns!r}")
    return columns


def _describe_time(df: pd.DataFrame, parts: dict[str, np.ndarray], key: np.ndarray, columns: list[str]) -> str:
    def at(i: int) -> str:
        return "/".join(str(df[c].iloc[i]) for c in columns)

    spans = []
    for part, idx in parts.items():
        order = idx[np.lexsort(key[idx].T[::-1])]
        spans.append(f"{part} {at(int(order[0]))}..{at(int(order[-1]))}")
    return f"time split on {', '.join(columns)}: " + ", ".join(spans)


def frame_data(df: pd.DataFrame, schema: Schema, seed: int, *, drop: Sequence[str] = (), split: str = "stratified",
               time_columns: Any = None, target_fpr: float = 0.01, name: str = "dataframe",
               sha256: str | None = None, positive_label: Any = None) -> DomainData:
    """Check ``df`` against ``schema`` (and its ``drop`` list), split it and encode each part.

    Example:
        >>> from domains.tabular.synthetic import card_schema, generate
        >>> df = generate(400, seed=0).assign(day=np.arange(400) // 10)
        >>> data = frame_data(df, card_schema(), seed=0, drop=["day"], split="time", time_columns="day")
        >>> data.info.split
        'train 240 / val 80 / test 80; time split on day: train 0..23, val 24..31, test 32..39'
    """
    if split not in SPLITS:
        raise ConfigError(f"options.split must be one of {', '.join(SPLITS)}, got {split!r}")
    columns = _time_columns(time_columns) if split == "time" or time_columns is not None else []
    if split == "time" and not columns:
        raise ConfigError("split: time needs options.time_columns (e.g. [Year, Month])")
    if split != "time" and columns:
        raise ConfigError("options.time_columns apply to split: time only: set split: time or drop time_columns")
    if schema.target is None:
        raise ConfigError("no target column: pass --target COLUMN (options.target) or set target: in the schema")
    _check_columns(df, schema, drop, columns)
    y = labels(df, schema.target, positive_label)
    if len(np.unique(y)) < 2:
        raise DataError(f"target column {schema.target!r} holds only class {int(y[0])}: both 0 and 1 are needed")
    key = time_key(df, columns) if columns else None
    features = df.drop(columns=list(drop))
    _check_numeric_text(features, schema)
    schema.check_frame(features)
    parts = time_split(key, y) if key is not None else stratified_split(y, seed)
    frames = {k: features.iloc[v].reset_index(drop=True) for k, v in parts.items()}
    sets = {k: TensorDataset(encode(schema, f), torch.as_tensor(y[parts[k]])) for k, f in frames.items()}
    numeric = [c.name for c in schema.columns if c.numeric]
    train = frames["train"]
    raw = {"schema": schema, "frames": frames, "target_fpr": target_fpr, "drop": list(drop),
           "mean": [float(train[c].mean()) for c in numeric], "std": [float(train[c].std()) for c in numeric]}
    how = (_describe_time(df, parts, key, columns) if key is not None else f"stratified, seed {seed}")
    sizes = f"train {len(frames['train'])} / val {len(frames['val'])} / test {len(frames['test'])}"
    info = DatasetInfo(name, sha256, f"{sizes}; {how}", n_classes=2, class_names=["legit", "fraud"])
    return DomainData(sets["train"], sets["val"], sets["test"], info, raw)


def load(spec: str, seed: int, *, schema: str | Path | None, target: str | None = None, split: str = "stratified",
         time_columns: Any = None, target_fpr: float = 0.01, positive_label: Any = None) -> DomainData:
    """Read ``csv:PATH`` or ``parquet:PATH`` under the schema file ``schema``, check it, split and encode it.

    ``target`` names the label column (it overrides the schema's ``target``). See the module docstring
    for the checks and the splits; the example there reads a CSV file.
    """
    kind, path = parse_spec(spec)
    if not schema:
        raise ConfigError(f"--data {spec} needs a schema file: pass --schema FILE (options.schema); "
                          "Schema.infer(DataFrame) proposes one with every column immutable, to edit")
    if not isinstance(schema, str | Path):
        raise ConfigError(f"options.schema must be a schema file path, got {schema!r}")
    parsed, drop = read_schema(Path(schema))
    if target is not None:
        if not isinstance(target, str) or not target:
            raise ConfigError(f"options.target must be a column name, got {target!r}")
        if target in drop:
            raise ConfigError(f"the target {target!r} is in the schema's drop list")
        if parsed.target not in (None, target):
            log.info("target column %r (from --target) instead of the schema's %r", target, parsed.target)
        parsed = dataclasses.replace(parsed, target=target)
    df = read_table(kind, path, parsed)
    return frame_data(df, parsed, seed, drop=drop, split=split, time_columns=time_columns, target_fpr=target_fpr,
                      name=path.name, sha256=_sha256(path), positive_label=positive_label)
