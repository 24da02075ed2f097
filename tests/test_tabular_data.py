"""Tabular data from files: CSV and Parquet under a schema file, the time split, and bad input."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from domains.tabular import TabularDomain, TabularOptions
from domains.tabular import data as tabular_data
from domains.tabular.synthetic import card_schema, generate
from robustkit import ConfigError, DataError
from robustkit.cli import main
from robustkit.config import RunConfig

VEHICLE_SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "examples" / "vehicle_insurance_schema.yaml"
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def write_schema(folder: Path, schema: dict, name: str = "schema.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(schema, sort_keys=False))
    return path


def card_files(folder: Path, n: int = 300) -> tuple[pd.DataFrame, Path, Path]:
    """Synthetic transactions with an id column, as CSV, and the card schema dropping the id."""
    df = generate(n, seed=0).assign(txn_id=np.arange(n) + 1000)
    df.to_csv(folder / "cards.csv", index=False)
    return df, folder / "cards.csv", write_schema(folder, {**card_schema().to_dict(), "drop": ["txn_id"]})


def load(path: Path | str, schema: Path | None, **options) -> object:
    kind = "parquet" if str(path).endswith(".parquet") else "csv"
    opts = {"schema": str(schema), **options} if schema is not None else options
    domain = TabularDomain()
    return domain.load_data(f"{kind}:{path}", seed=0, options=domain.parse_options(opts))


# ----------------------------------------------------------------------------- round trips
def assert_same_data(a, b) -> None:
    for part in ("train", "val", "test"):
        for ta, tb in zip(getattr(a, part).tensors, getattr(b, part).tensors, strict=True):
            assert torch.equal(ta, tb), part
        pd.testing.assert_frame_equal(a.raw["frames"][part], b.raw["frames"][part], check_dtype=False)


def test_csv_round_trip_gives_the_same_data_as_the_frame(tmp_path):
    df, csv, schema = card_files(tmp_path)
    from_file = load(csv, schema)
    from_frame = TabularDomain().from_frame(df.drop(columns="txn_id"), card_schema(), seed=0)
    assert_same_data(from_file, from_frame)
    assert from_file.info.name == "cards.csv" and len(from_file.info.sha256) == 64
    assert from_file.raw["drop"] == ["txn_id"] and "txn_id" not in from_file.raw["frames"]["train"]


def test_parquet_round_trip_and_target_from_the_option(tmp_path):
    pytest.importorskip("pyarrow")
    df, _, _ = card_files(tmp_path)
    df.to_parquet(tmp_path / "cards.parquet")
    spec = {k: v for k, v in card_schema().to_dict().items() if k != "target"}
    schema = write_schema(tmp_path, {**spec, "drop": ["txn_id"]}, "no_target.yaml")
    with pytest.raises(ConfigError, match="--target"):
        load(tmp_path / "cards.parquet", schema)
    data = load(tmp_path / "cards.parquet", schema, target="is_fraud")
    assert_same_data(data, load(tmp_path / "cards.csv", schema, target="is_fraud"))


def test_parquet_without_pyarrow_says_which_package_is_missing(tmp_path, monkeypatch):
    _, _, schema = card_files(tmp_path)
    (tmp_path / "cards.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "fastparquet", None)
    with pytest.raises(ConfigError, match="pyarrow"):
        load(tmp_path / "cards.parquet", schema)


def test_category_text_is_read_as_written(tmp_path):
    """'NA' and 'None' are categories of a categorical column, not missing values."""
    n = 60
    df = pd.DataFrame({"region": (["NA", "None", "EU"] * n)[:n], "amount": np.arange(n, dtype=float),
                       "fraud": [0, 1] * (n // 2)})
    df.to_csv(tmp_path / "r.csv", index=False)
    schema = write_schema(tmp_path, {"target": "fraud", "columns": {
        "region": {"type": "categorical", "categories": ["NA", "None", "EU"]}, "amount": {"type": "continuous"}}})
    data = load(tmp_path / "r.csv", schema)
    assert set(data.raw["frames"]["train"]["region"]) == {"NA", "None", "EU"}


# ----------------------------------------------------------------------------- time split
def claims(n: int = 480, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "claim_id": np.arange(n),
        "Year": rng.choice([2021, 2022, 2023], n),
        "Month": rng.choice(MONTHS, n),
        "amount": rng.uniform(10, 1000, n).round(2),
        "witness": rng.choice(["No", "Yes"], n),
        "fraud": (rng.random(n) < 0.2).astype(int),
    })


CLAIM_SCHEMA = {
    "budget": 2.0, "target": "fraud", "drop": ["claim_id"],
    "columns": {
        "Year": {"type": "integer", "lower": 2000, "upper": 2030},
        "Month": {"type": "categorical", "categories": MONTHS},
        "amount": {"type": "continuous", "mutable": True, "lower": 0, "upper": 2000, "cost": 0.01},
        "witness": {"type": "categorical", "mutable": True, "categories": ["No", "Yes"], "cost": 1.0},
    },
}


def month_index(frame: pd.DataFrame) -> np.ndarray:
    return frame["Year"].to_numpy() * 12 + frame["Month"].map(MONTHS.index).to_numpy()


def test_month_names_sort_in_calendar_order():
    key = tabular_data.time_key(pd.DataFrame({"m": ["Dec", "Jan", "sept", "February"]}), ["m"])
    assert key[:, 0].tolist() == [12, 1, 9, 2]
    dates = tabular_data.time_key(pd.DataFrame({"d": ["2024-02-01", "2023-12-31 23:00"]}), ["d"])
    assert dates[0, 0] > dates[1, 0]
    for values, match in [(["Jan", "0"], "mixes numbers"), (["Jan", "Friday"], "'Friday'")]:
        with pytest.raises(DataError, match=match):
            tabular_data.time_key(pd.DataFrame({"m": values}), ["m"])


def test_time_split_trains_on_the_past_and_tests_on_the_latest(tmp_path):
    claims().to_csv(tmp_path / "claims.csv", index=False)
    schema = write_schema(tmp_path, CLAIM_SCHEMA)
    data = load(tmp_path / "claims.csv", schema, split="time", time_columns=["Year", "Month"])
    t = {k: month_index(f) for k, f in data.raw["frames"].items()}
    assert t["train"].max() < t["val"].min() and t["val"].max() < t["test"].min()
    sizes = [len(t[k]) for k in ("train", "val", "test")]
    assert sum(sizes) == 480 and abs(sizes[0] / 480 - 0.6) < 0.05 and abs(sizes[2] / 480 - 0.2) < 0.05
    assert "time split on Year, Month" in data.info.split and "2021/Jan" in data.info.split
    stratified = load(tmp_path / "claims.csv", schema)
    assert "stratified" in stratified.info.split


def test_time_split_refuses_a_part_without_fraud(tmp_path):
    df = claims()
    df.loc[df["Year"] == 2023, "fraud"] = 0  # the most recent claims hold no fraud
    df.to_csv(tmp_path / "claims.csv", index=False)
    with pytest.raises(DataError, match="test part"):
        load(tmp_path / "claims.csv", write_schema(tmp_path, CLAIM_SCHEMA), split="time",
             time_columns=["Year", "Month"])


def test_time_split_options_are_checked(tmp_path):
    claims().to_csv(tmp_path / "claims.csv", index=False)
    schema = write_schema(tmp_path, CLAIM_SCHEMA)
    cases = [({"split": "time"}, "time_columns"), ({"split": "random"}, "split"),
             ({"time_columns": ["Year"]}, "split: time"), ({"split": "time", "time_columns": "witness"}, "witness"),
             ({"split": "time", "time_columns": ["Yaer"]}, "Yaer"), ({"n_rows": 500}, "n_rows")]
    for options, match in cases:
        with pytest.raises((ConfigError, DataError), match=match):
            load(tmp_path / "claims.csv", schema, **options)


# ----------------------------------------------------------------------------- bad input
def test_missing_files_and_schema_say_what_to_pass(tmp_path):
    _, csv, schema = card_files(tmp_path)
    with pytest.raises(DataError, match="nowhere"):
        load(tmp_path / "nowhere.csv", schema)
    with pytest.raises(ConfigError, match="no_schema"):
        load(csv, tmp_path / "no_schema.yaml")
    with pytest.raises(ConfigError, match="--schema"):
        load(csv, None)
    with pytest.raises(ConfigError, match="json:"):
        TabularDomain().load_data(f"json:{csv}", seed=0, options=TabularOptions())
    with pytest.raises(ConfigError, match="synthetic"):
        TabularDomain().load_data("synthetic", seed=0, options=TabularOptions(schema=str(schema)))


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        (lambda df: df.drop(columns="amount"), DataError, ["'amount'", "lacks"]),
        (lambda df: df.assign(note="x"), DataError, ["'note'", "drop"]),
        (lambda df: df.drop(columns="txn_id"), DataError, ["'txn_id'", "drop"]),
        (lambda df: df.assign(hour=df["hour"].astype(object).where(df.index != 3, "noon")), DataError,
         ["'hour'", "'noon'"]),
        (lambda df: df.assign(amount=df["amount"].where(df.index >= 7)), DataError, ["'amount'", "7 missing"]),
        (lambda df: df.assign(country=df["country"].where(df.index != 5, "atlantis")), DataError,
         ["'country'", "'atlantis'"]),
        (lambda df: df.assign(customer_age=df["customer_age"].where(df.index != 2, 150)), DataError,
         ["'customer_age'", "150"]),
        (lambda df: df.assign(is_fraud=df["is_fraud"] * 2), DataError, ["'is_fraud'", "0"]),
        (lambda df: df.assign(is_fraud=df["is_fraud"].map({0: "no", 1: "yes"})), DataError,
         ["'is_fraud'", "'no' and 'yes'", "--positive-label"]),
        (lambda df: df.assign(is_fraud=0), DataError, ["'is_fraud'", "only class 0"]),
        (lambda df: df.assign(is_fraud=df["is_fraud"].where(df.index != 0)), DataError, ["'is_fraud'", "1 missing"]),
    ],
    ids=["missing-column", "extra-column", "dropped-column-absent", "text-in-integer", "nan", "unseen-category",
         "out-of-bounds", "target-not-binary", "target-strings", "target-one-class", "target-nan"],
)
def test_bad_input_names_the_column(tmp_path, change, error, words):
    df, csv, schema = card_files(tmp_path)
    change(df).to_csv(csv, index=False)
    with pytest.raises(error) as info:
        load(csv, schema)
    for word in words:
        assert word in str(info.value)


def test_string_labels_take_fraud_by_name_or_the_positive_label_never_by_sort_order(tmp_path):
    """'legit' sorts after 'fraud': a sort-order rule would have made every legitimate row the attacked class."""
    df, csv, schema = card_files(tmp_path)
    numeric = load(csv, schema).test.tensors[1]
    df.assign(is_fraud=df["is_fraud"].map({0: "legit", 1: "fraud"})).to_csv(csv, index=False)
    assert torch.equal(load(csv, schema).test.tensors[1], numeric)
    df.assign(is_fraud=df["is_fraud"].map({0: "paid", 1: "chargeback"})).to_csv(csv, index=False)
    named = TabularDomain().load_data(f"csv:{csv}", 0, TabularOptions(schema=str(schema), positive_label='chargeback'))
    assert torch.equal(named.test.tensors[1], numeric)


def test_schema_file_mistakes_are_config_errors(tmp_path):
    _, csv, _ = card_files(tmp_path)
    spec = card_schema().to_dict()
    for bad, match in [({**spec, "drop": "amount"}, "amount"), ({**spec, "drop": [3]}, "drop"),
                       ({**spec, "colour": 1}, "colour")]:
        with pytest.raises(ConfigError, match=match):
            load(csv, write_schema(tmp_path, bad, "bad.yaml"))


# ----------------------------------------------------------------------------- command line
def test_cli_hardens_a_csv_with_schema_and_target_flags(tmp_path):
    df = generate(400, seed=1, fraud_rate=0.2)
    df.to_csv(tmp_path / "tx.csv", index=False)
    schema = write_schema(tmp_path, {k: v for k, v in card_schema().to_dict().items() if k != "target"})
    out = tmp_path / "run"
    argv = ["harden", "tabular", "--data", f"csv:{tmp_path / 'tx.csv'}", "--schema", str(schema), "--target",
            "is_fraud", "--epochs", "1", "--preset", "quick", "--budget", "1", "--budgets", "1", "--quiet", "--out",
            str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"]["name"] == "tx.csv" and metrics["dataset"]["split"].startswith("train 239 / val 80")
    config = RunConfig.from_yaml(out / "config.yaml")
    assert config.options == {"schema": str(schema), "target": "is_fraud"} and config.data == f"csv:{tmp_path}/tx.csv"
    assert (out / "examples" / "examples.csv").is_file()


def test_cli_bad_csv_is_one_line_naming_the_column(tmp_path, capsys):
    df, csv, schema = card_files(tmp_path)
    df.assign(note="x").to_csv(csv, index=False)
    out = tmp_path / "run"
    assert main(["harden", "tabular", "--data", f"csv:{csv}", "--schema", str(schema), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'note'" in err and not out.exists()


# ----------------------------------------------------------------------------- shared data
def vehicle_csv() -> Path:
    root = os.environ.get("ROBUSTKIT_DATA")
    if not root:
        pytest.skip("ROBUSTKIT_DATA is not set: point it at the shared data folder to run this test")
    return Path(root) / "vehicle_insurance_claim_fraud" / "fraud_oracle.csv.gz"


@pytest.mark.shared_data
def test_vehicle_claims_load_with_the_docs_schema_and_split_by_time():
    path = vehicle_csv()
    raw = pd.read_csv(path)
    rows, frauds = len(raw), int(raw["FraudFound_P"].sum())
    assert (rows, frauds) == (15420, 923)
    data = load(path, VEHICLE_SCHEMA)
    parts = [data.train, data.val, data.test]
    assert sum(len(p) for p in parts) == rows and sum(int(p.tensors[1].sum()) for p in parts) == frauds
    assert data.info.sha256 == "d1227b889c674a3551c066db4317b4ae3af08a075faa6761b76221eeef84daa0"
    schema = data.raw["schema"]
    assert len(schema.names) == 30 and schema.target == "FraudFound_P" and schema.budget == 3.0
    assert {c.name for c in schema.columns if c.mutable} >= {"PoliceReportFiled", "WitnessPresent"}
    assert not schema["Sex"].mutable and not schema["PastNumberOfClaims"].mutable

    timed = load(path, VEHICLE_SCHEMA, split="time", time_columns=["Year", "Month"])
    assert sum(len(p) for p in (timed.train, timed.val, timed.test)) == rows
    assert "train 1994/Jan.." in timed.info.split and timed.info.split.endswith("..1996/Dec")
    # the parts follow each other in time: rebuild each row's month from the raw file
    when = raw["Year"].to_numpy() * 12 + raw["Month"].map(MONTHS.index).to_numpy()
    parts_idx = tabular_data.time_split(tabular_data.time_key(raw, ["Year", "Month"]), raw["FraudFound_P"].to_numpy())
    assert when[parts_idx["train"]].max() < when[parts_idx["val"]].min() <= when[parts_idx["val"]].max() < \
        when[parts_idx["test"]].min()
    assert [len(parts_idx[k]) for k in ("train", "val", "test")] == [len(timed.train), len(timed.val), len(timed.test)]
