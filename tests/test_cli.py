"""``robustkit quickstart`` hardens each domain end to end (the toy one here, for speed), prints one table,
links the reports, and refuses to overwrite a complete run."""

from __future__ import annotations

import json

import pytest

from robustkit.cli import main


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "quick"
    assert main(["quickstart", "--out", str(out), "--quiet", "--domains", "toy"]) == 0
    return out / "toy"


def test_quickstart_hardens_the_toy_model(quickstart_run, capsys):
    metrics = json.loads((quickstart_run / "metrics.json").read_text())
    standard, hardened = metrics["models"]["standard"], metrics["models"]["hardened"]
    assert metrics["domain"] == "toy" and metrics["threat"]["space"] == "linf"
    assert hardened["robust_accuracy"]["worst"] > standard["robust_accuracy"]["worst"] + 0.15
    assert standard["clean_accuracy"] > 0.85 and hardened["clean_accuracy"] > 0.8
    assert metrics["verdict"].startswith(("robust at budget", "partly robust at budget"))
    assert standard["verdict"] == "not robust"
    html = (quickstart_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    index = (quickstart_run.parent / "index.html").read_text()
    assert 'href="toy/report.html"' in index
    assert f"{hardened['robust_accuracy']['worst']:.1%}" in index


def test_quickstart_table_shows_recall_where_one_class_is_attacked():
    from robustkit.quickstart import format_table

    metrics = {"domain": "tabular", "models": {"hardened": {
        "clean_accuracy": 0.99, "robust_accuracy": {"worst": 0.97}, "verdict": "robust at budget 3",
        "headline": {"measure": "recall", "clean": 0.8, "attacked": 0.6},
        "domain_metrics": {"recall_clean": 0.8, "recall_attacked": 0.6}}}}
    table = format_table({"tabular": metrics}).splitlines()
    assert table[0].split()[:5] == ["domain", "model", "measure", "clean", "attacked"]
    assert table[1].split()[:5] == ["tabular", "hardened", "recall", "80.0%", "60.0%"]


def test_quickstart_refuses_an_unknown_domain_before_any_work(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path / "q"), "--domains", "toy,nope"]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "images" in err
    assert not (tmp_path / "q").exists()


def test_existing_complete_run_is_refused_without_force(quickstart_run, capsys):
    before = (quickstart_run / "metrics.json").read_bytes()
    assert main(["quickstart", "--out", str(quickstart_run.parent), "--domains", "toy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robustkit: error:") and "--force" in err and "\n" not in err
    assert (quickstart_run / "metrics.json").read_bytes() == before


def test_bad_option_value_exits_2_with_one_line(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path / "x"), "--threads", "0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "x").exists()
