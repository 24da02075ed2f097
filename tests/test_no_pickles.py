"""Loading never runs code from a file: a pickle that would create a file is refused at every entry point.

The tripwire is a pickle whose unpickling opens ``proof`` for writing (creating it); each loader is
handed it under the names and formats it reads, must fail with a robustkit error, and ``proof`` must
never appear.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import robustkit as rk
from domains.images import ImagesDomain, ImagesOptions
from robustkit.cli import main


class Tripwire:
    """Unpickling this creates ``path``: the proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


@pytest.fixture()
def proof(tmp_path: Path) -> Path:
    path = tmp_path / "proof"
    pickle.loads(pickle.dumps(Tripwire(path)))  # the tripwire works ...
    assert path.is_file()
    path.unlink()
    yield path
    assert not path.exists(), "a pickle was loaded"  # ... and was never sprung


def write_tripwire(path: Path, proof: Path) -> Path:
    path.write_bytes(pickle.dumps(Tripwire(proof)))
    return path


@pytest.fixture()
def image_model_folder(tmp_path: Path) -> Path:
    """A valid images model folder (digits, untrained): the loaders' happy path."""
    domain = ImagesDomain()
    data = domain.load_data("digits", seed=0, options=ImagesOptions(max_train=64, max_val=32, max_test=32))
    spec = domain.model_spec(data, ImagesOptions())
    folder = tmp_path / "model"
    domain.save_model(domain.build_model(spec), folder, spec)
    return folder


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], out: Path) -> str:
    assert main([*argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustkit: error:") and "Traceback" not in err, err
    assert not out.exists()
    return err


def test_a_pickle_named_model_safetensors_is_refused(image_model_folder, proof, tmp_path, capsys) -> None:
    write_tripwire(image_model_folder / "model.safetensors", proof)
    err = refused(["evaluate", "images", "--model", str(image_model_folder)], capsys, tmp_path / "out")
    assert "not a readable safetensors file" in err
    with pytest.raises(rk.RobustkitError):
        ImagesDomain().load_model(image_model_folder)


def test_a_pickled_model_file_is_refused_unread(image_model_folder, proof, tmp_path, capsys) -> None:
    (image_model_folder / "model.safetensors").unlink()
    write_tripwire(image_model_folder / "model.pt", proof)
    err = refused(["evaluate", "images", "--model", str(image_model_folder)], capsys, tmp_path / "out")
    assert "pickled weights are refused" in err


@pytest.mark.parametrize("name", ["weights.pt", "weights.safetensors"])
def test_pickled_weights_for_a_factory_model_are_refused(proof, tmp_path, capsys, name) -> None:
    weights = write_tripwire(tmp_path / name, proof)
    err = refused(["evaluate", "images", "--model-factory", "torch.nn:Flatten", "--weights", str(weights)], capsys,
                  tmp_path / "out")
    assert "safetensors" in err


def test_yaml_configs_and_schemas_never_construct_python_objects(proof, tmp_path, capsys) -> None:
    payload = f"!!python/object/apply:builtins.open [{str(proof)!r}, w]\n"
    config = tmp_path / "config.yaml"
    config.write_text(f"domain: images\nseed: {payload}")
    assert "not valid YAML" in refused(["harden", "images", "--config", str(config)], capsys, tmp_path / "a")
    schema = tmp_path / "schema.yaml"
    schema.write_text(f"budget: {payload}")
    csv = tmp_path / "data.csv"
    csv.write_text("a,label\n1,0\n2,1\n")
    refused(["harden", "tabular", "--data", f"csv:{csv}", "--schema", str(schema), "--target", "label"], capsys,
            tmp_path / "b")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("target", ["trainer.pt", "model.safetensors"])
def test_a_tampered_checkpoint_is_refused_on_resume(proof, tmp_path, target) -> None:
    x, y = torch.rand(32, 4), torch.randint(0, 2, (32,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    space = rk.LinfBall(eps=0.1, bounds=(0.0, 1.0))
    ckpt = tmp_path / "ckpt"
    rk.AdversarialTrainer(torch.nn.Linear(4, 2), space, "fast", checkpoint_dir=ckpt, progress=False).fit(loader, 1)
    latest = rk.training.checkpoint.latest_checkpoint(ckpt)
    write_tripwire(latest / target, proof)
    trainer = rk.AdversarialTrainer(torch.nn.Linear(4, 2), space, "fast", checkpoint_dir=ckpt, progress=False)
    with pytest.raises(rk.RobustkitError, match="checkpoint"):
        trainer.fit(loader, 2, resume=ckpt)
