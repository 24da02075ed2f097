"""harden / evaluate / attack through the CLI on a toy domain registered from the tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import robustkit as rk
from robustkit.cli import main
from robustkit.training.trainer import AdversarialTrainer
from tests import toy_domain

FAST = ["--preset", "quick", "--quiet"]
TIMING_KEYS = {"train_seconds", "seconds", "versions"}


def numbers(metrics: dict) -> dict:
    """metrics.json without timings and versions."""
    if isinstance(metrics, dict):
        return {k: numbers(v) for k, v in metrics.items() if k not in TIMING_KEYS}
    if isinstance(metrics, list):
        return [numbers(v) for v in metrics]
    return metrics


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["harden", "toy-small", "--out", str(out), *FAST]) == 0
    return out


def test_run_directory_matches_the_contract(run):
    for name in ("metrics.json", "report.html", "report.md", "config.yaml", "history.csv"):
        assert (run / name).is_file(), name
    for model in ("standard", "hardened"):
        assert (run / "models" / model / "model.safetensors").is_file()
        assert json.loads((run / "models" / model / "model.json").read_text())["domain"] == "toy-small"
    assert not (run / "checkpoints").exists()  # removed once the models were saved: resume loads models/
    assert list((run / "examples").iterdir())
    assert (not list(run.rglob("*.pkl")) and not list(run.rglob("*.pt*"))) or all(
        p.name == "trainer.pt" for p in run.rglob("*.pt")
    )
    m = json.loads((run / "metrics.json").read_text())
    assert set(m) >= {"schema_version", "domain", "dataset", "seed", "threat", "attacks", "models", "checks",
                      "verdict", "versions"}
    assert m["schema_version"] == 1 and m["domain"] == "toy-small" and m["seed"] == 0
    assert set(m["dataset"]) >= {"name", "sha256", "split"}
    assert set(m["threat"]) >= {"space", "budget"} and m["threat"]["space"] == "linf"
    assert set(m["attacks"]) == {"pgd"} and m["attacks"]["pgd"]["steps"] == 10
    assert set(m["models"]) == {"standard", "hardened"}
    for entry in m["models"].values():
        assert set(entry) >= {"clean_accuracy", "robust_accuracy", "domain_metrics", "train_seconds"}
        assert set(entry["robust_accuracy"]) == {"pgd", "worst"}
    assert all(set(c) == {"name", "passed", "detail"} for c in m["checks"])
    assert m["verdict"].startswith(("robust at budget", "partly robust at budget", "not robust", "inconclusive: ",
                                    "trivial model"))
    assert set(m["versions"]) >= {"robustkit", "torch"}
    hardened, standard = m["models"]["hardened"], m["models"]["standard"]
    assert m["method"] == "pgd" and hardened["training"] == {"method": "pgd", "epochs": 6}
    assert standard["training"] == {"method": "standard", "epochs": 6}
    assert hardened["robust_accuracy"]["worst"] > standard["robust_accuracy"]["worst"] + 0.1
    html = (run / "report.html").read_text()
    assert 'id="budget-plot"' in html and 'id="history-plot"' in html and "robustkit harden toy-small" in html
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["domain"] == "toy-small" and config["method"] == "pgd" and config["epochs"] == 6


def test_config_file_reproduces_the_run(run, tmp_path):
    again = tmp_path / "again"
    assert main(["harden", "toy-small", "--config", str(run / "config.yaml"), "--out", str(again), "--quiet"]) == 0
    first = numbers(json.loads((run / "metrics.json").read_text()))
    assert numbers(json.loads((again / "metrics.json").read_text())) == first


def test_stopped_run_resumes_to_the_same_result(run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "stopped"
    original = AdversarialTrainer._save
    calls = {"n": 0}

    def save_then_die(self, total_epochs):
        original(self, total_epochs)
        calls["n"] += 1
        if calls["n"] == 8:  # standard: 6 epochs; hardened: stop after its second epoch
            raise KeyboardInterrupt

    monkeypatch.setattr(AdversarialTrainer, "_save", save_then_die)
    assert main(["harden", "toy-small", "--out", str(out), *FAST]) == 130
    assert f"robustkit harden toy-small --resume {out}" in capsys.readouterr().err  # the exact command to continue
    monkeypatch.setattr(AdversarialTrainer, "_save", original)
    assert not (out / "metrics.json").exists()
    assert (out / "models" / "standard" / "model.json").is_file()
    assert not (out / "models" / "hardened").exists()
    assert main(["harden", "toy-small", "--out", str(out), *FAST]) == 2, "a stopped run is not silently restarted"
    assert main(["harden", "toy-small", "--resume", str(out), "--quiet"]) == 0
    first = numbers(json.loads((run / "metrics.json").read_text()))
    assert numbers(json.loads((out / "metrics.json").read_text())) == first
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 6 + 6


def test_complete_run_is_refused_without_force_and_replaced_with_it(run, tmp_path, capsys):
    before = (run / "metrics.json").read_bytes()
    assert main(["harden", "toy-small", "--out", str(run), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err
    assert (run / "metrics.json").read_bytes() == before
    copy = tmp_path / "copy"
    assert main(["harden", "toy-small", "--out", str(copy), *FAST, "--epochs", "1"]) == 0
    assert main(["harden", "toy-small", "--out", str(copy), *FAST, "--epochs", "1", "--force"]) == 0
    assert (copy / "metrics.json").is_file()


@pytest.mark.parametrize(
    "args",
    [
        ["--epochs", "0"],
        ["--method", "nope"],
        ["--budget", "-1"],
        ["--budget", "nan"],
        ["--preset", "huge"],
        ["--epochs", "two"],
        ["--data", "elsewhere"],
        ["--device", "tpu"],
    ],
)
def test_bad_option_values_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, args):
    out = tmp_path / "bad"
    assert main(["harden", "toy-small", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustkit: error:") and err.count("\n") == 1
    assert not out.exists()


def test_unknown_domain_and_unknown_config_key(tmp_path, capsys):
    assert main(["harden", "nosuchdomain", "--out", str(tmp_path / "x")]) == 2
    assert "unknown domain" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("domain: toy-small\nepoch: 3\n")
    assert main(["harden", "toy-small", "--config", str(bad), "--out", str(tmp_path / "y")]) == 2
    assert "unknown config key 'epoch'" in capsys.readouterr().err


def test_evaluate_and_attack_a_saved_model(run, tmp_path):
    ev = tmp_path / "ev"
    assert main(["evaluate", "toy-small", "--model", str(run), "--out", str(ev), *FAST]) == 0
    m = json.loads((ev / "metrics.json").read_text())
    assert set(m["models"]) == {"evaluated"} and m["command"] == "evaluate"
    hardened = json.loads((run / "metrics.json").read_text())["models"]["hardened"]
    assert m["models"]["evaluated"]["clean_accuracy"] == hardened["clean_accuracy"]
    assert m["models"]["evaluated"]["robust_accuracy"] == hardened["robust_accuracy"]
    at = tmp_path / "at"
    assert main(["attack", "toy-small", "--model", str(run / "models" / "standard"), "--out", str(at), *FAST]) == 0
    m = json.loads((at / "metrics.json").read_text())
    assert m["examples"]["n"] == 200
    from safetensors.torch import load_file

    ex = load_file(str(at / "examples" / "examples.safetensors"))
    space = rk.LinfBall(eps=m["threat"]["budget"], bounds=(-4.0, 4.0))
    assert ex["x_adv"].shape == (200, 130) and bool(space.contains(ex["x_adv"], ex["x"]).all())


def test_pickled_model_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    assert main(["evaluate", "toy-small", "--model", str(folder), "--out", str(tmp_path / "o")]) == 2
    assert "pickled weights are refused" in capsys.readouterr().err


def test_domain_registry_lists_registered_domains():
    assert "toy-small" in rk.available_domains() and "toy" in rk.available_domains()
    assert isinstance(rk.get_domain("toy-small"), toy_domain.SmallToyDomain)


def test_a_model_that_does_not_fit_the_data_is_refused_before_any_write(run, tmp_path, capsys):
    """A model for 130 features against data with 66: one-line error, and the output folder never appears."""
    model_dir = tmp_path / "model"
    shutil.copytree(run / "models" / "hardened", model_dir)
    meta = json.loads((model_dir / "model.json").read_text())
    (model_dir / "model.json").write_text(json.dumps({**meta, "domain": "toy-narrow"}))
    out = tmp_path / "never"
    assert main(["evaluate", "toy-narrow", "--model", str(model_dir), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not take this data's inputs" in err
    assert not out.exists()


def test_weights_that_do_not_fit_their_config_give_one_line(run, tmp_path, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(run / "models" / "hardened", model_dir)
    meta = json.loads((model_dir / "model.json").read_text())
    meta["spec"]["inputs"] = 7
    (model_dir / "model.json").write_text(json.dumps(meta))
    assert main(["evaluate", "toy-small", "--model", str(model_dir), "--out", str(tmp_path / "o"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "do not fit" in err


def test_evaluate_with_a_run_directory_reuses_its_data_and_options(run, tmp_path):
    """A model is judged on the data it was trained for: a run's data spec and options carry over unless given,
    and a factory named in its config.yaml is never taken from the file."""
    from robustkit.config import RunConfig
    from robustkit.pipeline import _reuse_run

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text("domain: images\ndata: mnist:/somewhere\nmodel_factory: evil:build\n"
                                        "options: {norm: l2}\n")
    config = RunConfig(domain="images", model=str(folder))
    reused = _reuse_run(config, folder)
    assert reused.data == "mnist:/somewhere" and reused.options == {"norm": "l2"} and reused.model_factory is None
    told = _reuse_run(RunConfig(domain="images", data="digits", options={"norm": "linf"}), folder)
    assert told.data == "digits" and told.options == {"norm": "linf"}
    with pytest.raises(rk.ConfigError, match="is a 'images' run, not 'text'"):
        _reuse_run(RunConfig(domain="text"), folder)
    ev = tmp_path / "ev"
    assert main(["evaluate", "toy-small", "--model", str(run), "--out", str(ev), *FAST]) == 0
    assert json.loads((ev / "metrics.json").read_text())["dataset"] == json.loads(
        (run / "metrics.json").read_text())["dataset"]
