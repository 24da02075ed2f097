"""Bring your own model: ``--model-factory package.module:function`` with ``--weights`` (safetensors)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import robustkit as rk
from domains.tabular import TabularDomain, TabularOptions
from robustkit.cli import main
from robustkit.factory import build_from_factory

NETS = textwrap.dedent(
    """
    from torch import nn

    from domains.tabular import Schema, SchemaEncoder


    def tiny_cnn(channels, size, classes):
        return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(8 * size * size, classes))


    def linear_fraud(n_features, schema, mean, std):
        return nn.Sequential(SchemaEncoder(Schema.from_dict(schema), mean, std), nn.Linear(n_features, 2))


    def needs_depth(channels, depth):
        return nn.Linear(channels, depth)


    def not_a_module(classes):
        return "a string"


    def broken(classes):
        raise RuntimeError("out of coffee")
    """
)
FAST = ["--method", "fast", "--epochs", "2", "--batch-size", "64", "--preset", "quick", "--quiet", "--threads", "1"]


@pytest.fixture()
def nets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's module ``my_nets`` in the current folder (importable the way ``python -m`` finds it)."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "my_nets.py").write_text(NETS)
    monkeypatch.chdir(folder)
    monkeypatch.delitem(__import__("sys").modules, "my_nets", raising=False)
    return folder


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_images_harden_then_evaluate_a_factory_model(nets: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["harden", "images", "--model-factory", "my_nets:tiny_cnn", "--out", str(run), *FAST]) == 0
    meta = json.loads((run / "models" / "hardened" / "model.json").read_text())
    assert meta["spec"]["factory"] == "my_nets:tiny_cnn"
    assert meta["spec"]["arguments"]["channels"] == 1 and meta["spec"]["arguments"]["size"] == 8
    hardened = metrics(run)["models"]["hardened"]
    assert hardened["clean_accuracy"] > 0.5, "the factory's model was trained"

    refused = tmp_path / "refused"
    assert main(["evaluate", "images", "--model", str(run), "--out", str(refused), "--quiet"]) == 2
    assert "pass --model-factory my_nets:tiny_cnn" in capsys.readouterr().err and not refused.exists()

    ev = tmp_path / "ev"
    assert main(["evaluate", "images", "--model", str(run), "--model-factory", "my_nets:tiny_cnn",
                 "--out", str(ev), "--preset", "quick", "--quiet"]) == 0
    assert metrics(ev)["models"]["evaluated"]["robust_accuracy"] == hardened["robust_accuracy"]

    weights = run / "models" / "hardened" / "model.safetensors"
    direct = tmp_path / "direct"
    assert main(["evaluate", "images", "--model-factory", "my_nets:tiny_cnn", "--weights", str(weights),
                 "--out", str(direct), "--preset", "quick", "--quiet"]) == 0
    assert metrics(direct)["models"]["evaluated"]["robust_accuracy"] == hardened["robust_accuracy"]


def test_tabular_factory_model_with_the_schema_encoder(nets: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["harden", "tabular", "--model-factory", "my_nets:linear_fraud", "--out", str(run), "--method", "fast",
            "--epochs", "2", "--preset", "quick", "--quiet", "--threads", "1"]
    config = tmp_path / "small.yaml"
    config.write_text("options:\n  n_rows: 2000\n")
    assert main([*args, "--config", str(config)]) == 0
    m = metrics(run)
    assert m["models"]["hardened"]["domain_metrics"]["threshold"] is not None
    meta = json.loads((run / "models" / "hardened" / "model.json").read_text())
    data = TabularDomain().load_data("synthetic", 0, TabularOptions(n_rows=2000))
    assert meta["spec"]["arguments"]["n_features"] == data.test[0][0].shape[0], "the width of the model's input"
    assert (run / "models" / "hardened" / "schema.yaml").is_file()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model-factory", "my_nets.tiny_cnn"], "package.module:function"),
        (["--model-factory", "no_such_module:net"], "cannot import 'no_such_module'"),
        (["--model-factory", "my_nets:nope"], "has no attribute 'nope'"),
        (["--model-factory", "my_nets:needs_depth"], "needs the argument 'depth'"),
        (["--model-factory", "my_nets:not_a_module"], "returned a str, not a torch.nn.Module"),
        (["--model-factory", "my_nets:broken"], "raised RuntimeError: out of coffee"),
        (["--model-factory", "my_nets:tiny_cnn", "--weights", "w.pt"], "a .safetensors file"),
        (["--model-factory", "my_nets:tiny_cnn", "--weights", "missing.safetensors"], "does not exist"),
        (["--model-factory", "my_nets:tiny_cnn", "--weights", "wrong.safetensors"], "do not fit the factory's model"),
    ],
)
def test_bad_factories_are_one_line_errors_before_any_write(nets, tmp_path, capsys, flags, message) -> None:
    save_file({"1.weight": torch.zeros(3, 3)}, str(nets / "wrong.safetensors"))
    out = tmp_path / "out"
    assert main(["harden", "images", "--out", str(out), *flags, *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustkit: error:") and message in err, err
    assert not out.exists()


def test_evaluate_needs_weights_with_a_factory_and_text_takes_hugging_face_folders(nets, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["evaluate", "images", "--model-factory", "my_nets:tiny_cnn", "--out", str(out)]) == 2
    assert "--weights FILE.safetensors" in capsys.readouterr().err and not out.exists()
    assert main(["harden", "text", "--model-factory", "my_nets:tiny_cnn", "--out", str(out), "--quiet"]) == 2
    assert "--model hf:DIR" in capsys.readouterr().err and not out.exists()


def test_build_from_factory_passes_only_the_arguments_a_function_names() -> None:
    model = build_from_factory("torch.nn:Linear", {"in_features": 3, "out_features": 2, "classes": 2})
    assert isinstance(model, torch.nn.Linear) and model.in_features == 3
    with pytest.raises(rk.ConfigError, match="needs the argument 'in_features'"):
        build_from_factory("torch.nn:Linear", {"classes": 2})
