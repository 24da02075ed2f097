"""The tabular threat model as data: what an attacker may change in each column, and at what cost.

A :class:`Schema` lists the feature columns (type, mutability, bounds, direction, cost) and a cost
budget per row. Every column is **immutable unless the schema says otherwise**: inference from a
DataFrame proposes types and bounds but never mutability.

Cost of a row change (the budget's unit): for numeric columns ``cost x |change|`` in the column's
own units; for a categorical column ``cost`` once if the category changes.

Relations between numeric columns are linear equalities and inequalities written as text, such as
``"amount <= credit_limit"``, ``"total = cash + card"`` or ``"2 * fee + amount >= 10"`` (see
:class:`Relation`). The data must satisfy them, and so must every adversarial row.

Example:
    >>> import pandas as pd
    >>> schema = Schema([Column("amount", "continuous", mutable=True, lower=0, upper=100, cost=0.1),
    ...                  Column("age", "integer", lower=18, upper=99)], budget=2.0)
    >>> orig = pd.DataFrame({"amount": [50.0, 50.0, 50.0], "age": [30, 30, 30]})
    >>> adv = pd.DataFrame({"amount": [40.0, 10.0, 50.0], "age": [30, 30, 31]})
    >>> schema.validate(adv, orig).tolist()     # 10 units cost 1; 40 units cost 4 > 2; age is immutable
    [True, False, False]
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from robustkit.errors import ConfigError, DataError
from robustkit.yamlfile import load_yaml

__all__ = ["DIRECTIONS", "TYPES", "Column", "Relation", "Schema"]

log = logging.getLogger("robustkit")

TYPES = ("continuous", "integer", "binary", "categorical")
DIRECTIONS = ("both", "increase", "decrease")
#: tolerance of :meth:`Schema.validate` for float rounding (relative to the value, and absolute)
RTOL, ATOL = 1e-6, 1e-6


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False for a name the system refuses (too long: a one-line YAML text, not a path)."""
    try:
        return path.is_file()
    except OSError:
        return False


@dataclass
class Column:
    """One feature column of a schema.

    Args:
        name: the column's name in the DataFrame.
        type: ``continuous``, ``integer``, ``binary`` (0/1) or ``categorical``.
        mutable: may an attacker change it? (default False: immutable until said otherwise).
        lower, upper: bounds of numeric columns (None: open side); binary columns are [0, 1].
        direction: ``both``, ``increase`` (may only grow) or ``decrease`` (may only shrink).
        cost: cost per unit change (numeric) or per category change (categorical); > 0 if mutable.
        categories: the categories of a categorical column (values are compared as strings).
    """

    name: str
    type: str = "continuous"
    mutable: bool = False
    lower: float | None = None
    upper: float | None = None
    direction: str = "both"
    cost: float = 1.0
    categories: list[str] | None = None

    def __post_init__(self) -> None:
        where = f"column {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"a column name must be a non-empty string, got {self.name!r}")
        if self.type not in TYPES:
            raise ConfigError(f"{where}: type must be one of {', '.join(TYPES)}, got {self.type!r}")
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"{where}: direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
        if not isinstance(self.mutable, bool):
            raise ConfigError(f"{where}: mutable must be true or false, got {self.mutable!r}")
        try:
            self.cost = float(self.cost)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: cost must be a number, got {self.cost!r}") from None
        if not math.isfinite(self.cost) or self.cost < 0 or (self.mutable and self.cost <= 0):
            raise ConfigError(f"{where}: cost must be a finite number > 0 for a mutable column, got {self.cost!r}")
        if self.type == "categorical":
            if not isinstance(self.categories, list | tuple) or len(self.categories) < 2:
                raise ConfigError(f"{where}: a categorical column needs a list of at least 2 categories, "
                                  f"got {self.categories!r}")
            self.categories = [str(c) for c in self.categories]
            if len(set(self.categories)) != len(self.categories):
                raise ConfigError(f"{where}: categories repeat")
            if self.lower is not None or self.upper is not None or self.direction != "both":
                raise ConfigError(f"{where}: a categorical column has no bounds or direction")
            return
        if self.categories is not None:
            raise ConfigError(f"{where}: only categorical columns list categories")
        if self.type == "binary":
            self.lower = 0.0 if self.lower is None else self.lower
            self.upper = 1.0 if self.upper is None else self.upper
        for side in ("lower", "upper"):
            value = getattr(self, side)
            if value is None:
                continue
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: {side} must be a number, got {value!r}") from None
            if math.isnan(value):
                raise ConfigError(f"{where}: {side} is NaN")
            setattr(self, side, value)
        if self.type in ("integer", "binary"):  # whole bounds; an infinite one stays open
            if self.lower is not None and math.isfinite(self.lower):
                self.lower = float(math.ceil(self.lower - 1e-9))
            if self.upper is not None and math.isfinite(self.upper):
                self.upper = float(math.floor(self.upper + 1e-9))
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ConfigError(f"{where}: bounds are impossible (lower {self.lower:g} > upper {self.upper:g})")
        if self.type == "binary" and (self.lower < 0 or self.upper > 1):  # type: ignore[operator]
            raise ConfigError(f"{where}: a binary column takes 0 and 1 only")

    @property
    def numeric(self) -> bool:
        return self.type != "categorical"

    @property
    def discrete(self) -> bool:
        return self.type in ("integer", "binary")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "mutable": self.mutable}
        if self.numeric:
            out.update({"lower": self.lower, "upper": self.upper, "direction": self.direction})
        else:
            out["categories"] = list(self.categories or [])
        out["cost"] = self.cost
        return out


_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
                    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)|(?P<op><=|>=|==|=)|(?P<sym>[-+*]))")


@dataclass(frozen=True)
class Relation:
    """A linear relation between numeric columns, parsed from text: ``sum(coef x column) op constant``.

    The text is two sums of terms joined by ``<=``, ``>=`` or ``=``; a term is a column name, a
    number, or ``number * name`` (``2*a``, ``0.5 * fee``), each with a ``+`` or ``-`` sign. Column
    names are identifiers (letters, digits, ``_`` and ``.``).

    Example:
        >>> r = Relation.parse("total = cash + 2 * card - 1")
        >>> r.coefficients, r.op, r.constant
        ({'total': 1.0, 'cash': -1.0, 'card': -2.0}, '=', -1.0)
        >>> r.holds({"total": 2.0, "cash": 1.0, "card": 1.0})
        True
    """

    text: str
    coefficients: dict[str, float]
    op: str  # "<=" or "=" (">=" is stored negated)
    constant: float

    @classmethod
    def parse(cls, text: str) -> Relation:
        """Parse ``text``; raise :class:`ConfigError` saying what is wrong."""
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"a relation must be a text such as 'a <= b', got {text!r}")
        tokens, pos = [], 0
        stripped = text.rstrip()
        while pos < len(stripped):
            m = _TOKEN.match(stripped, pos)
            if m is None or m.end() == pos:
                rest = stripped[pos:].strip()
                raise ConfigError(f"relation {text!r}: cannot read {rest!r}; write e.g. 'a + b <= 2 * c'")
            tokens.append((m.lastgroup, m.group(m.lastgroup or "")))
            pos = m.end()
        ops = [i for i, (kind, _) in enumerate(tokens) if kind == "op"]
        if len(ops) != 1:
            raise ConfigError(f"relation {text!r}: needs exactly one of <=, >= or =")
        op = tokens[ops[0]][1]
        left = cls._side(tokens[: ops[0]], text)
        right = cls._side(tokens[ops[0] + 1:], text)
        coefficients: dict[str, float] = {}
        for name, coef in left[0].items():
            coefficients[name] = coefficients.get(name, 0.0) + coef
        for name, coef in right[0].items():
            coefficients[name] = coefficients.get(name, 0.0) - coef
        coefficients = {k: v for k, v in coefficients.items() if v != 0.0}
        if not coefficients:
            raise ConfigError(f"relation {text!r}: names no column (or its columns cancel out)")
        constant = right[1] - left[1]
        if op == ">=":
            coefficients = {k: -v for k, v in coefficients.items()}
            constant = -constant
        return cls(" ".join(stripped.split()), coefficients, "=" if op in ("=", "==") else "<=", constant)

    @staticmethod
    def _side(tokens: list[tuple[str | None, str]], text: str) -> tuple[dict[str, float], float]:
        """One side of a relation: column coefficients and a constant."""
        if not tokens:
            raise ConfigError(f"relation {text!r}: a side of the comparison is empty")
        coefficients: dict[str, float] = {}
        constant, i = 0.0, 0
        while i < len(tokens):
            sign = 1.0
            while i < len(tokens) and tokens[i][0] == "sym" and tokens[i][1] in "+-":
                sign *= -1.0 if tokens[i][1] == "-" else 1.0
                i += 1
            value, name = 1.0, None
            if i < len(tokens) and tokens[i][0] == "num":
                value = float(tokens[i][1])
                if not math.isfinite(value):
                    raise ConfigError(f"relation {text!r}: the number {tokens[i][1]} is too large")
                i += 1
                if i < len(tokens) and tokens[i] == ("sym", "*"):
                    i += 1
                    if i >= len(tokens) or tokens[i][0] != "name":
                        raise ConfigError(f"relation {text!r}: '*' must be followed by a column name")
                    name = tokens[i][1]
                    i += 1
            elif i < len(tokens) and tokens[i][0] == "name":
                name = tokens[i][1]
                i += 1
            else:
                raise ConfigError(f"relation {text!r}: expected a number or a column name")
            if name is None:
                constant += sign * value
            else:
                coefficients[name] = coefficients.get(name, 0.0) + sign * value
            if i < len(tokens) and not (tokens[i][0] == "sym" and tokens[i][1] in "+-"):
                raise ConfigError(f"relation {text!r}: unexpected {tokens[i][1]!r}")
        return coefficients, constant

    def residual(self, values: Mapping[str, Any]) -> Any:
        """``sum(coef x value) - constant`` (<= 0 or == 0 when the relation holds); arrays work."""
        return sum(coef * values[name] for name, coef in self.coefficients.items()) - self.constant

    def tolerance(self, values: Mapping[str, Any]) -> Any:
        """Rounding slack of :meth:`holds`: ``ATOL + RTOL x sum |coef x value|`` (plus the constant)."""
        scale = sum(abs(coef) * abs(values[name]) for name, coef in self.coefficients.items())
        return ATOL + RTOL * (scale + abs(self.constant))

    def holds(self, values: Mapping[str, Any], reference: Mapping[str, Any] | None = None) -> Any:
        """Does the relation hold (bool, or a bool array for array values), up to :meth:`tolerance`?

        With ``reference`` (the original values a change started from) the slack is the larger of the
        two: float32 arithmetic on the way from the original leaves rounding of the original's size.
        """
        r, tol = self.residual(values), self.tolerance(values)
        if reference is not None:
            tol = np.maximum(tol, self.tolerance(reference))
        return (abs(r) <= tol) if self.op == "=" else (r <= tol)


@dataclass
class Schema:
    """Feature columns, a cost budget per row and (optionally) the target column.

    Args:
        columns: the feature columns, in model order.
        budget: the largest total cost of the changes to one row.
        target: name of the label column (excluded from the features), if the data has one.
        relations: linear relations between numeric columns (:class:`Relation` or its text) that
            every row, original or adversarial, satisfies.
        drop: columns the data holds that are not features (identifiers, time stamps used only to
            split): accepted in frames and ignored.
    """

    columns: list[Column]
    budget: float = 1.0
    target: str | None = None
    relations: list[Relation] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    _by_name: dict[str, Column] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.columns:
            raise ConfigError("a schema needs at least one column")
        names = [c.name for c in self.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"column {dupes[0]!r} appears twice in the schema")
        if self.target is not None and (not isinstance(self.target, str) or not self.target):
            raise ConfigError(f"the schema's target must be a column name, got {self.target!r}")
        if self.target is not None and self.target in names:
            raise ConfigError(f"column {self.target!r} is the target and cannot also be a feature")
        try:
            self.budget = float(self.budget)
        except (TypeError, ValueError):
            raise ConfigError(f"the schema's budget must be a number, got {self.budget!r}") from None
        if not math.isfinite(self.budget) or self.budget < 0:
            raise ConfigError(f"the schema's budget must be a finite number >= 0, got {self.budget!r}")
        self._by_name = {c.name: c for c in self.columns}
        if not isinstance(self.relations, list | tuple):
            raise ConfigError(f"the schema's relations must be a list of texts like 'a <= b', got {self.relations!r}")
        self.relations = [r if isinstance(r, Relation) else Relation.parse(r) for r in self.relations]
        if isinstance(self.drop, str):
            self.drop = [self.drop]
        if not isinstance(self.drop, list | tuple) or not all(isinstance(d, str) and d for d in self.drop):
            raise ConfigError(f"the schema's drop must be a list of column names, got {self.drop!r}")
        self.drop = list(dict.fromkeys(self.drop))
        both = sorted(set(self.drop) & {*names, *([self.target] if self.target else [])})
        if both:
            raise ConfigError(f"column {both[0]!r} is both dropped and declared in the schema: keep one")
        for r in self.relations:
            for name in r.coefficients:
                if name not in self._by_name:
                    raise ConfigError(f"relation {r.text!r} names column {name!r} that the schema does not declare")
                if not self._by_name[name].numeric:
                    raise ConfigError(f"relation {r.text!r}: column {name!r} is categorical; relations are between "
                                      "numeric columns")

    # ----------------------------------------------------------------- access
    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def __getitem__(self, name: str) -> Column:
        return self._by_name[name]

    def with_budget(self, budget: float) -> Schema:
        return Schema(list(self.columns), budget, self.target, list(self.relations), list(self.drop))

    # ----------------------------------------------------------------- YAML
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"budget": self.budget, "target": self.target,
                               "columns": {c.name: c.to_dict() for c in self.columns}}
        if self.relations:
            out["relations"] = [r.text for r in self.relations]
        if self.drop:
            out["drop"] = list(self.drop)
        return out

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Schema:
        if not isinstance(spec, Mapping):
            raise ConfigError("a schema is a mapping with keys budget, target, columns, relations and drop")
        keys = ("budget", "target", "columns", "relations", "drop")
        unknown = sorted(set(spec) - set(keys), key=str)  # YAML keys may be numbers, null, ...
        if unknown:
            raise ConfigError(f"unknown schema key {unknown[0]!r}: allowed keys are {', '.join(keys)}")
        columns = spec.get("columns")
        if not isinstance(columns, Mapping) or not columns:
            raise ConfigError("the schema's columns must be a mapping: name -> {type, mutable, ...}")
        allowed = {"type", "mutable", "lower", "upper", "direction", "cost", "categories"}
        built = []
        for name, body in columns.items():
            body = body or {}
            if not isinstance(body, Mapping):
                raise ConfigError(f"column {name!r}: expected a mapping of settings, got {body!r}")
            bad = sorted(set(body) - allowed, key=str)
            if bad:
                allowed_list = ", ".join(sorted(allowed))
                raise ConfigError(f"column {name!r}: unknown setting {bad[0]!r} (allowed: {allowed_list})")
            built.append(Column(str(name), **body))
        return cls(built, spec.get("budget", 1.0), spec.get("target"), spec.get("relations") or [],
                   spec.get("drop") or [])

    def dump(self, path: str | Path | None = None) -> str:
        """The schema as YAML text (also written to ``path`` if given)."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def load(cls, source: str | Path) -> Schema:
        """A schema from a YAML file path or YAML text."""
        path = Path(source) if isinstance(source, Path) or "\n" not in str(source) else None
        if path is not None and not _is_file(path):
            raise ConfigError(f"schema file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8") if path is not None else str(source)
        except UnicodeDecodeError as exc:
            raise ConfigError(f"schema file {path} is not UTF-8 text (byte {exc.start} cannot be decoded): save it "
                              "as UTF-8") from None
        except OSError as exc:
            raise ConfigError(f"cannot read schema file {path}: {exc.strerror or exc}") from None
        return cls.from_dict(load_yaml(text, f"schema file {path}" if path is not None else "the schema"))

    # ----------------------------------------------------------------- inference
    @classmethod
    def infer(cls, df: pd.DataFrame, target: str | None = None, budget: float = 1.0) -> Schema:
        """Types and observed bounds from ``df``; every column immutable (say which may change yourself).

        Logs (logger ``robustkit``) what it decided for each column.
        """
        columns = []
        for name in df.columns:
            if name == target:
                continue
            s = df[name]
            if s.isna().any():
                raise DataError(f"column {name!r} has missing values: fill or drop them before inferring a schema")
            if pd.api.types.is_bool_dtype(s):
                col = Column(str(name), "binary")
            elif pd.api.types.is_numeric_dtype(s):
                values = s.to_numpy(dtype=float)
                whole = bool(np.all(np.mod(values, 1) == 0))
                if whole and set(np.unique(values)) <= {0.0, 1.0}:
                    col = Column(str(name), "binary")
                else:
                    col = Column(str(name), "integer" if whole else "continuous",
                                 lower=float(values.min()), upper=float(values.max()))
            else:
                cats = sorted({str(v) for v in s})
                if len(cats) < 2:
                    raise DataError(f"column {name!r} holds a single value {cats[0]!r}: drop it")
                col = Column(str(name), "categorical", categories=cats)
            detail = (f"categories {col.categories}" if col.type == "categorical"
                      else f"bounds [{col.lower:g}, {col.upper:g}]")
            log.info("schema inference: column %r -> %s, %s, immutable", name, col.type, detail)
            columns.append(col)
        return cls(columns, budget, target)

    # ----------------------------------------------------------------- checking data
    def check_frame(self, df: pd.DataFrame, what: str = "data") -> None:
        """Raise :class:`DataError` naming the column if ``df`` does not fit the schema."""
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
        expected = [*self.names, *([self.target] if self.target else [])]
        missing = [n for n in expected if n not in df.columns]
        if missing:
            raise DataError(f"{what} lacks column {missing[0]!r} that the schema declares")
        extra = [n for n in df.columns if n not in expected and n not in self.drop]
        if extra:
            raise DataError(f"{what} has column {extra[0]!r} that the schema does not declare: add it or drop it")
        for c in self.columns:
            s = df[c.name]
            if s.isna().any():
                raise DataError(f"column {c.name!r} has {int(s.isna().sum())} missing values: fill or drop them")
            if c.type == "categorical":
                unseen = sorted({str(v) for v in s} - set(c.categories or []))
                if unseen:
                    raise DataError(f"column {c.name!r} holds category {unseen[0]!r} not in the schema's categories")
                continue
            if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
                raise DataError(f"column {c.name!r} is {c.type} but holds non-numeric values (dtype {s.dtype})")
            values = s.to_numpy(dtype=float)
            if not np.isfinite(values).all():
                raise DataError(f"column {c.name!r} holds infinite values")
            if c.discrete and not np.all(np.mod(values, 1) == 0):
                raise DataError(f"column {c.name!r} is {c.type} but holds fractional values")
            if c.lower is not None and values.min() < c.lower:
                raise DataError(f"column {c.name!r} goes down to {values.min():g}, below the schema's lower bound "
                                f"{c.lower:g}: the bounds exclude the data")
            if c.upper is not None and values.max() > c.upper:
                raise DataError(f"column {c.name!r} goes up to {values.max():g}, above the schema's upper bound "
                                f"{c.upper:g}: the bounds exclude the data")
        for r in self.relations:
            broken = ~np.asarray(r.holds({n: df[n].to_numpy(dtype=float) for n in r.coefficients}))
            if broken.any():
                first = df.index[int(np.flatnonzero(broken)[0])]
                raise DataError(f"{int(broken.sum())} rows of the {what} break the schema's relation {r.text!r} "
                                f"(first: row {first!r}): fix the data or the relation")

    def cost(self, adv: pd.DataFrame, orig: pd.DataFrame) -> pd.Series:
        """Cost of changing each row of ``orig`` into the same row of ``adv``."""
        total = np.zeros(len(orig))
        for c in self.columns:
            a, o = adv[c.name].to_numpy(), orig[c.name].to_numpy()
            if c.type == "categorical":
                total += c.cost * (a.astype(str) != o.astype(str))
            else:
                total += c.cost * np.abs(a.astype(float) - o.astype(float))
        return pd.Series(total, index=orig.index, name="cost")

    def validate(self, adv: pd.DataFrame, orig: pd.DataFrame) -> pd.Series:
        """Bool per row: is ``adv``'s row an allowed change of ``orig``'s under this schema?

        Checks immutables unchanged, real types (integers whole, binaries 0/1, categories from the
        schema), bounds, directions, relations, and total cost <= budget (with a 1e-6 tolerance for
        rounding).
        """
        if len(adv) != len(orig):
            raise DataError(f"adversarial rows ({len(adv)}) and original rows ({len(orig)}) differ in number")
        for frame, what in ((adv, "adversarial rows"), (orig, "original rows")):
            missing = [n for n in self.names if n not in frame.columns]
            if missing:
                raise DataError(f"{what} lack column {missing[0]!r}")
        ok = np.ones(len(orig), dtype=bool)
        for c in self.columns:
            a_raw, o_raw = adv[c.name].to_numpy(), orig[c.name].to_numpy()
            if c.type == "categorical":
                a_s, o_s = a_raw.astype(str), o_raw.astype(str)
                ok &= np.isin(a_s, np.asarray(c.categories))
                if not c.mutable:
                    ok &= a_s == o_s
                continue
            try:
                a, o = a_raw.astype(float), o_raw.astype(float)
            except (TypeError, ValueError):
                ok &= False
                continue
            tol = ATOL + RTOL * np.abs(o)
            ok &= np.isfinite(a)
            if not c.mutable:
                ok &= a == o
            if c.discrete:
                ok &= np.mod(a, 1) == 0
            if c.lower is not None:
                ok &= a >= c.lower - tol
            if c.upper is not None:
                ok &= a <= c.upper + tol
            if c.direction == "increase":
                ok &= a >= o - tol
            elif c.direction == "decrease":
                ok &= a <= o + tol
        for r in self.relations:
            try:
                values = {n: adv[n].to_numpy(dtype=float) for n in r.coefficients}
                reference = {n: orig[n].to_numpy(dtype=float) for n in r.coefficients}
            except (TypeError, ValueError):
                ok &= False
                continue
            ok &= np.asarray(r.holds(values, reference), dtype=bool)
        ok &= self.cost(adv, orig).to_numpy() <= self.budget * (1 + RTOL) + ATOL
        return pd.Series(ok, index=orig.index, name="valid")

