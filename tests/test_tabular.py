"""The tabular fraud domain: schema rules, valid adversarial rows, hardening, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st

from domains.tabular import SchemaSpace, TabularDomain, encode, repair
from domains.tabular.schema import Column, Schema
from domains.tabular.synthetic import card_schema, generate
from robustkit import ConfigError, DataError
from robustkit.cli import main
from tests.strategies import schema_and_rows


@given(schema_and_rows(), st.integers(0, 2**16), st.floats(0.1, 100.0))
def test_every_projected_and_repaired_row_is_valid(case, seed, scale):
    schema, df = case
    x = encode(schema, df)
    space = SchemaSpace(schema)
    g = torch.Generator().manual_seed(seed)
    wild = x + scale * torch.randn(x.shape, generator=g)
    for x_adv in (space.project(wild, x), space.init(x, seed=seed), space.vertex(x, seed=seed),
                  space.project(space.step(x, torch.randn(x.shape, generator=g), scale), x)):
        assert bool(space.contains(x_adv, x).all())
        rows, info = repair(schema, x_adv, x, df)
        assert not info["repair_failed"].any(), "projection already gives repairable points"
        assert schema.validate(rows, df).all()
        assert (info["cost"] <= schema.budget * (1 + 1e-6) + 1e-6).all()
        for c in schema.columns:
            if not c.mutable:
                assert rows[c.name].astype(str).tolist() == df[c.name].astype(str).tolist()
            if c.type == "categorical":
                assert set(rows[c.name]) <= set(c.categories)


def test_validate_catches_each_rule():
    schema = card_schema()
    df = generate(20, seed=1).drop(columns="is_fraud")
    assert schema.validate(df, df).all()
    bad = {"customer_age": df["customer_age"] + 1, "hour": df["hour"] + 0.5, "country": "mars",
           "txn_count_24h": df["txn_count_24h"] - 1, "amount": 6000.0}
    for col, value in bad.items():
        adv = df.copy()
        adv[col] = value
        assert not schema.validate(adv, df).any(), col
    adv = df.copy()
    adv["amount"] = df["amount"] + 2000.0  # 2000 euros cost 4 > budget 3 (and break the bound above 3000)
    assert not schema.validate(adv, df).any()
    adv["amount"] = df["amount"] + 1000.0  # cost 2: allowed where the bound holds
    assert schema.validate(adv, df)[(df["amount"] <= 4000).to_numpy()].all()


def test_yaml_round_trip_and_inference_never_makes_columns_mutable(tmp_path, caplog):
    schema = card_schema()
    path = tmp_path / "schema.yaml"
    schema.dump(path)
    assert Schema.load(path).to_dict() == schema.to_dict()
    with caplog.at_level("INFO", logger="robustkit"):
        inferred = Schema.infer(generate(200, seed=0), target="is_fraud")
    assert not any(c.mutable for c in inferred.columns)
    types = {c.name: c.type for c in inferred.columns}
    assert types["card_present"] == "binary" and types["hour"] == "integer" and types["country"] == "categorical"
    assert "'amount' -> continuous" in caplog.text


def test_bad_input_names_the_column():
    schema = card_schema()
    df = generate(300, seed=0)
    domain = TabularDomain()
    cases = {
        "amount": df.drop(columns="amount"),
        "extra": df.assign(extra=1),
        "hour": df.assign(hour=df["hour"].astype(float).where(df.index > 0)),
        "is_fraud": df.assign(is_fraud=df["is_fraud"] * 2),
    }
    for col, frame in cases.items():
        with pytest.raises(DataError, match=col):
            domain.from_frame(frame, schema, seed=0)
    tight = Schema.from_dict({**schema.to_dict(), "columns": {**schema.to_dict()["columns"],
                              "customer_age": {"type": "integer", "lower": 30, "upper": 40}}})
    with pytest.raises(DataError, match="customer_age"):
        domain.from_frame(df, tight, seed=0)
    with pytest.raises(ConfigError, match="amount"):
        Column("amount", "continuous", lower=5, upper=1)
    with pytest.raises(ConfigError, match="amount"):
        Schema.load("columns:\n  amount: {type: continuous, mutable: true, cost: 0}\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tabular")
    config = folder / "recipe.yaml"
    config.write_text(yaml.safe_dump({"domain": "tabular", "options": {"n_rows": 2500, "fraud_rate": 0.15}}))
    out = folder / "run"
    assert main(["harden", "tabular", "--config", str(config), "--out", str(out), "--preset", "quick", "--quiet",
                 "--epochs", "6"]) == 0
    return out


def test_hardened_model_keeps_more_fraud_recall_under_attack(run):
    m = json.loads((run / "metrics.json").read_text())
    std, hard = m["models"]["standard"]["domain_metrics"], m["models"]["hardened"]["domain_metrics"]
    assert m["domain"] == "tabular" and m["threat"]["budget"] == TabularDomain.default_budget
    assert std["recall_clean"] > 0.8 and hard["recall_clean"] > 0.8
    assert hard["recall_attacked"] > std["recall_attacked"]
    assert std["fpr_clean"] <= 0.03 and 0 < std["threshold"] < 1
    for d in (std, hard):
        assert d["valid_adversarial_share"] == 1.0 and d["repair_failed_share"] == 0.0 and d["roc_auc"] > 0.9
    for entry in m["models"].values():  # the headline is recall under the worst of every attack run
        lead, d = entry["headline"], entry["domain_metrics"]
        assert lead["measure"] == "recall" and lead["clean"] == d["recall_clean"]
        assert lead["attacked"] == d["recall_attacked"] <= d["recall_attacked_strongest"]
        assert lead["false_positive_rate"] == d["fpr_clean"]
        assert "strongest" in entry["robust_accuracy"]


def test_run_writes_valid_adversarial_rows_and_a_loadable_model(run):
    table = pd.read_csv(run / "examples" / "examples.csv")
    assert {"cost", "changed", "repair_failed", "valid", "amount", "country"} <= set(table.columns)
    assert table["valid"].all() and (table["cost"] <= TabularDomain.default_budget + 1e-6).all()
    model, meta = TabularDomain().load_model(run)
    assert (run / "models" / "hardened" / "schema.yaml").is_file() and 0 < meta["threshold"] < 1
    x = encode(card_schema(), generate(50, seed=3))
    assert model(x).shape == (50, 2) and bool(torch.isfinite(model(x)).all())
    assert np.isfinite(model(x).detach().numpy()).all()
