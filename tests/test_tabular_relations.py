"""Linear relations between columns: parsing, checking data, and attacks that keep them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import robustkit as rk
from domains.tabular import Column, Schema, SchemaSpace, encode, repair
from domains.tabular.schema import Relation


def _schema(budget: float = 50.0, relations: list[str] | None = None) -> Schema:
    return Schema(
        [
            Column("cash", "continuous", mutable=True, lower=0, upper=1000, cost=0.1),
            Column("card", "continuous", mutable=True, lower=0, upper=1000, cost=0.1),
            Column("total", "continuous", mutable=True, lower=0, upper=2000, cost=0.05),
            Column("limit", "continuous", lower=0, upper=2000),
            Column("shop", "categorical", mutable=True, categories=["a", "b", "c"], cost=1.0),
        ],
        budget=budget,
        relations=relations if relations is not None else ["total = cash + card", "total <= limit"],
    )


def _frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    cash = rng.uniform(0, 500, n).round(2)
    card = rng.uniform(0, 500, n).round(2)
    total = cash + card
    return pd.DataFrame({"cash": cash, "card": card, "total": total,
                         "limit": np.minimum(total + rng.uniform(0, 300, n), 2000).round(2),
                         "shop": rng.choice(["a", "b", "c"], n)})


@pytest.mark.parametrize(("text", "coefficients", "op", "constant"), [
    ("a <= b", {"a": 1.0, "b": -1.0}, "<=", 0.0),
    ("a >= 2*b + 3", {"a": -1.0, "b": 2.0}, "<=", -3.0),
    ("total = x + y", {"total": 1.0, "x": -1.0, "y": -1.0}, "=", 0.0),
    ("0.5 * fee - amount == -10", {"fee": 0.5, "amount": -1.0}, "=", -10.0),
    ("a + a <= 4 - -b", {"a": 2.0, "b": -1.0}, "<=", 4.0),
])
def test_relation_parsing(text: str, coefficients: dict[str, float], op: str, constant: float) -> None:
    r = Relation.parse(text)
    assert (r.coefficients, r.op, r.constant) == (coefficients, op, constant)


@pytest.mark.parametrize(("text", "message"), [
    ("a b", "exactly one"),
    ("a <= b <= c", "exactly one"),
    ("a <= ", "empty"),
    ("a * b <= 1", "unexpected"),
    ("2 * <= 1", "followed by a column"),
    ("a <= a", "names no column"),
    ("a % 2 <= 1", "cannot read"),
])
def test_bad_relations_are_refused(text: str, message: str) -> None:
    with pytest.raises(rk.ConfigError, match=message):
        Relation.parse(text)


def test_relations_must_name_numeric_columns_of_the_schema() -> None:
    with pytest.raises(rk.ConfigError, match="'nope'"):
        _schema(relations=["cash <= nope"])
    with pytest.raises(rk.ConfigError, match="categorical"):
        _schema(relations=["shop <= cash"])


def test_relations_round_trip_through_yaml() -> None:
    schema = _schema()
    again = Schema.load(schema.dump())
    assert [r.text for r in again.relations] == ["total = cash + card", "total <= limit"]
    assert again.relations == schema.relations


def test_data_that_breaks_a_relation_is_refused_with_the_relation_named() -> None:
    df = _frame(np.random.default_rng(0), 20)
    _schema().check_frame(df)
    df.loc[3, "total"] += 1.0
    with pytest.raises(rk.DataError, match=r"1 rows .* 'total = cash \+ card'"):
        _schema().check_frame(df)


def test_validate_rejects_rows_that_break_a_relation() -> None:
    df = _frame(np.random.default_rng(1), 4)
    adv = df.copy()
    adv.loc[0, "cash"] -= 5.0  # total no longer the sum
    adv.loc[1, ["cash", "total"]] -= 5.0  # kept: cost 0.5 + 0.25
    adv.loc[2, ["cash", "total"]] += df.loc[2, "limit"] - df.loc[2, "total"] + 1.0  # over the limit
    assert _schema().validate(adv, df).tolist() == [False, True, False, True]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), budget=st.floats(0.5, 200.0), scale=st.floats(1.0, 2000.0))
@example(seed=5000, budget=83.0, scale=1525.0)  # a total shrunk from 562 to 15: float32 rounding of the original's size
def test_projection_keeps_every_relation(seed: int, budget: float, scale: float) -> None:
    """Whatever the push, projected points satisfy the relations, and decode to valid rows."""
    rng = np.random.default_rng(seed)
    schema = _schema(budget)
    df = _frame(rng, 16)
    space = SchemaSpace(schema)
    x = encode(schema, df)
    push = torch.as_tensor(rng.normal(0, scale, x.shape), dtype=torch.float32)
    x_adv = space.project(x + push, x)
    assert bool(space.contains(x_adv, x).all())
    rows, info = repair(schema, x_adv, x, df)
    assert bool(schema.validate(rows, df).all())
    assert not info["repair_failed"].any()


def test_pgd_under_relations_returns_valid_rows_and_moves_them() -> None:
    """Class 1's logit is 10 + 0.01 (cash - total) = 10 - 0.01 card under the relation. Raising card
    by u while lowering cash by v costs 0.1 u + 0.1 v + 0.05 |u - v| <= 40 with u - v <= room to the
    limit L and v <= cash, so the best gain is min(266.7, L + min(cash, (40 - 0.15 L) / 0.2))."""
    schema = _schema(budget=40.0, relations=["total = cash + card", "total <= limit"])
    df = _frame(np.random.default_rng(2), 64)
    x = encode(schema, df)
    weight = torch.zeros(2, x.shape[1])
    weight[1, 0], weight[1, 2] = 1e-2, -1e-2
    model = torch.nn.Linear(x.shape[1], 2)
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(torch.tensor([0.0, 10.0]))
    y = torch.ones(len(x), dtype=torch.long)
    result = rk.PGD(SchemaSpace(schema), steps=30, step_size=20.0)(model, x, y)
    rows, info = repair(schema, result.x_adv, x, df)
    assert bool(schema.validate(rows, df).all())
    assert not info["repair_failed"].any()
    gain = rows["card"].to_numpy() - df["card"].to_numpy()
    room = df["limit"].to_numpy() - df["total"].to_numpy()
    best = np.where(room >= 40.0 / 0.15, 40.0 / 0.15,
                    room + np.minimum(df["cash"].to_numpy(), (40.0 - 0.15 * room) / 0.2))
    assert (gain <= best * (1 + 1e-4) + 1e-3).all()  # no row beats the optimum: constraints held
    assert (gain >= 0.9 * best).all()  # and PGD gets close to it
    np.testing.assert_allclose(rows["total"], rows["cash"] + rows["card"], rtol=1e-5, atol=1e-3)
