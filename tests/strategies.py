"""Hypothesis strategies shared by the tabular tests: random schemas with rows that satisfy them."""

from __future__ import annotations

from typing import Any

import pandas as pd
from hypothesis import strategies as st

from domains.tabular import Column, Schema

COSTS, BUDGETS = st.floats(0.05, 5.0), st.floats(0.0, 20.0)


@st.composite
def schema_and_rows(
    draw: Any,
    max_rows: int = 6,
    max_categories: int = 4,
    bound: int = 50,
    span: int = 100,
    costs: st.SearchStrategy[float] = COSTS,
    budgets: st.SearchStrategy[float] = BUDGETS,
    relation: bool = False,
) -> tuple[Schema, pd.DataFrame]:
    """A schema of 1-5 random columns (every type, mutability and direction) and 1..``max_rows`` valid rows.

    Numeric bounds start in ``[-bound, bound]`` and span up to ``span``; with ``relation``, sometimes one
    relation ``a - b <= c`` as tight as the rows allow.
    """
    columns, data = [], {}
    n = draw(st.integers(1, max_rows))
    for k in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["continuous", "integer", "binary", "categorical"]))
        mutable = draw(st.booleans())
        cost = draw(costs)
        name = f"c{k}"
        if kind == "categorical":
            cats = [f"v{i}" for i in range(draw(st.integers(2, max_categories)))]
            columns.append(Column(name, kind, mutable=mutable, categories=cats, cost=cost))
            data[name] = draw(st.lists(st.sampled_from(cats), min_size=n, max_size=n))
            continue
        direction = draw(st.sampled_from(["both", "increase", "decrease"]))
        if kind == "binary":
            columns.append(Column(name, kind, mutable=mutable, direction=direction, cost=cost))
            data[name] = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
            continue
        lo = draw(st.integers(-bound, bound))
        hi = lo + draw(st.integers(0, span))
        columns.append(Column(name, kind, mutable=mutable, lower=lo, upper=hi, direction=direction, cost=cost))
        values = st.integers(lo, hi) if kind == "integer" else st.floats(lo, hi, width=32)
        data[name] = draw(st.lists(values, min_size=n, max_size=n))
    df = pd.DataFrame(data)
    numeric = [c.name for c in columns if c.numeric]
    relations = []
    if relation and len(numeric) >= 2 and draw(st.booleans()):
        a, b = draw(st.permutations(numeric))[:2]
        relations.append(f"{a} - {b} <= {float((df[a].astype(float) - df[b].astype(float)).max())!r}")
    return Schema(columns, budget=draw(budgets), relations=relations), df
