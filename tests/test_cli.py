"""``robustkit quickstart`` runs ``harden toy`` end to end and refuses to overwrite a complete run."""

from __future__ import annotations

import json

import pytest

from robustkit.cli import main


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "quick"
    assert main(["quickstart", "--out", str(out), "--quiet"]) == 0
    return out


def test_quickstart_hardens_the_toy_model(quickstart_run, capsys):
    metrics = json.loads((quickstart_run / "metrics.json").read_text())
    standard, hardened = metrics["models"]["standard"], metrics["models"]["hardened"]
    assert metrics["domain"] == "toy" and metrics["threat"]["space"] == "linf"
    assert hardened["robust_accuracy"]["worst"] > standard["robust_accuracy"]["worst"] + 0.15
    assert standard["clean_accuracy"] > 0.85 and hardened["clean_accuracy"] > 0.8
    assert metrics["verdict"].startswith("robust at budget")
    html = (quickstart_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2


def test_existing_complete_run_is_refused_without_force(quickstart_run, capsys):
    before = (quickstart_run / "metrics.json").read_bytes()
    assert main(["quickstart", "--out", str(quickstart_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robustkit: error:") and "--force" in err and "\n" not in err
    assert (quickstart_run / "metrics.json").read_bytes() == before


def test_bad_option_value_exits_2_with_one_line(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path / "x"), "--threads", "0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "x").exists()
