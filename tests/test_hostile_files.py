"""Hostile files: a file never makes robustkit import code, and hostile data, configs and folders are refused
with a robustkit error, fast and before any write (issue 22's probe, one test per case it found)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from robustkit.cli import main

#: a user's module that leaves a file named ``proof`` behind when it is imported
EVIL = "from pathlib import Path\nPath('proof').write_text('imported')\n\ndef net(classes):\n    raise SystemExit(0)\n"


@pytest.fixture()
def evil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "evil_nets.py").write_text(EVIL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "evil_nets", raising=False)
    return tmp_path


def test_a_config_file_naming_a_factory_imports_nothing(evil: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (evil / "cfg.yaml").write_text("model_factory: evil_nets:net\n")
    assert main(["harden", "toy", "--config", "cfg.yaml", "--out", "run"]) == 2
    err = capsys.readouterr().err
    assert "add --model-factory evil_nets:net" in err and "only when the command line names it" in err
    assert not (evil / "proof").exists() and not (evil / "run").exists()


@pytest.mark.parametrize("flag", [[], ["--model-factory", "other_nets:net"]])
def test_resume_imports_no_factory_that_config_yaml_names(
    evil: Path, capsys: pytest.CaptureFixture[str], flag: list[str]
) -> None:
    (evil / "run").mkdir()
    (evil / "run" / "config.yaml").write_text("domain: toy\nmodel_factory: evil_nets:net\n")
    assert main(["harden", "toy", "--resume", "run", *flag]) == 2
    err = capsys.readouterr().err
    assert "was made with --model-factory evil_nets:net" in err
    assert not (evil / "proof").exists()


def test_a_factory_raising_system_exit_is_a_config_error(evil: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["harden", "toy", "--model-factory", "evil_nets:net", "--out", "run"]) == 2
    assert "raised SystemExit" in capsys.readouterr().err
    assert not (evil / "run").exists()


@pytest.mark.parametrize("source", ["def net(classes:\n", "raise SystemExit(3)\n", "import no_such_dep_rk\n",
                                    "1 / 0\n"])
def test_a_factory_module_that_fails_to_import_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], source: str
) -> None:
    (tmp_path / "broken_nets.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "broken_nets", raising=False)
    assert main(["harden", "toy", "--model-factory", "broken_nets:net", "--out", "run"]) == 2
    assert "--model-factory broken_nets:net" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
