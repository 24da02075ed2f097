"""Hostile files: a file never makes robustkit import code, and hostile data, configs and folders are refused
with a robustkit error, fast and before any write (issue 22's probe, one test per case it found)."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import math
import re
import shutil
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from domains.images import ImagesOptions
from domains.tabular import TabularOptions
from domains.text import TextOptions
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


# ----------------------------------------------------------------------------- refused before the first write
def run_cli(argv: list[str], out: Path) -> tuple[int, str]:
    """``main`` with ``--out``; returns the exit status and stderr, after checking the CLI's error contract."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([*argv, "--out", str(out), "--quiet", "--threads", "1"])
    torch.set_num_threads(THREADS)
    text = err.getvalue()
    assert "internal error" not in text and "Traceback" not in text, text
    return code, text


THREADS = torch.get_num_threads()


def refused(argv: list[str], tmp_path: Path, match: str) -> None:
    """Exit status 2, one line naming ``match``, nothing written."""
    code, err = run_cli(argv, tmp_path / "run")
    assert code == 2 and len(err.splitlines()) == 1 and re.search(match, err), err
    assert not (tmp_path / "run").exists(), sorted(p.name for p in (tmp_path / "run").rglob("*"))


def write_idx(folder: Path, shape: tuple[int, int, int], labels: list[int]) -> str:
    folder.mkdir(parents=True)
    n, h, w = shape
    pixels = torch.randint(0, 256, (n * h * w,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for prefix in ("train", "t10k"):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", n, h, w)
                                                             + pixels.numpy().tobytes())
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", n)
                                                             + bytes(labels))
    return f"mnist:{folder}"


@pytest.mark.parametrize(("shape", "labels", "match"), [
    ((40, 2, 2), [i % 10 for i in range(40)], "at least 4x4 pixels"),
    ((40, 3, 5), [i % 10 for i in range(40)], "at least 4x4 pixels"),
    ((40, 8, 8), [3] * 40, "every image has the same label"),
])
def test_idx_images_the_model_cannot_take_are_refused_before_any_write(
    tmp_path: Path, shape: tuple[int, int, int], labels: list[int], match: str
) -> None:
    refused(["harden", "images", "--data", write_idx(tmp_path / "d", shape, labels)], tmp_path, match)


def test_a_folder_of_3x3_images_is_refused_before_any_write(tmp_path: Path) -> None:
    for c in "ab":
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (3, 3), color=i * 40).save(tmp_path / "d" / c / f"{i}.png")
    refused(["harden", "images", "--data", f"folder:{tmp_path / 'd'}"], tmp_path, "at least 4x4 pixels")


def test_flat_images_are_read_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from domains.images import ImagesDomain

    for c in "ab":
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.new("L", (6, 6), color=0).save(tmp_path / c / f"{i}.png")
    with caplog.at_level(logging.WARNING, logger="robustkit"):
        ImagesDomain().load_data(f"folder:{tmp_path}", seed=0, options=ImagesOptions())
    assert any("one flat colour" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("options", "match"), [
    ({"embedding_eps": -1}, r"options\.embedding_eps must be a number > 0"),
    ({"embedding_eps": "abc"}, r"options\.embedding_eps"),
    ({"target_fpr": "abc"}, r"options\.target_fpr"),
    ({"target_fpr": 5}, r"options\.target_fpr must be a number between 0 and 0\.5"),
    ({"normalize": True}, "unknown text option 'normalize'"),
    ({"label_names": ["ok", "junk"]}, r"options\.label_names applies to csv"),
])
def test_bad_text_options_are_refused_before_any_write(tmp_path: Path, options: dict, match: str) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"options": options}))
    refused(["harden", "text", "--data", "demo:40", "--config", str(tmp_path / "c.yaml")], tmp_path, match)


def test_too_few_texts_and_too_many_demo_messages_are_refused(tmp_path: Path) -> None:
    sms = tmp_path / "sms.txt"
    sms.write_text("ham\thello\nspam\twin cash\nham\tcall me\nspam\tfree prize\n")
    refused(["harden", "text", "--data", f"sms:{sms}"], tmp_path, r"too few texts \(2 ham and 2 spam")
    refused(["harden", "text", "--data", "demo:99999999999999999999"], tmp_path, "demo:N takes 20 to 100000")


@pytest.fixture(scope="module")
def tabular_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic CSV, its schema, and a saved tabular model folder (untrained: only its files matter)."""
    from domains.tabular import TabularDomain
    from domains.tabular.synthetic import generate

    folder = tmp_path_factory.mktemp("tabular")
    generate(400, seed=0).to_csv(folder / "t.csv", index=False)
    domain = TabularDomain()
    data = domain.load_data("synthetic", 0, TabularOptions(n_rows=400))
    spec = domain.model_spec(data, TabularOptions())
    (folder / "schema.yaml").write_text(yaml.safe_dump(spec["schema"]))
    domain.save_model(domain.build_model(spec), folder / "model", spec, 0.5)
    return {"csv": folder / "t.csv", "schema": folder / "schema.yaml", "model": folder / "model"}


def test_a_budget_that_overflows_is_refused_before_any_write(tmp_path: Path, tabular_files: dict[str, Path]):
    schema = yaml.safe_load(tabular_files["schema"].read_text())
    schema["budget"] = 1e308
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(schema))
    refused(["harden", "tabular", "--data", f"csv:{tabular_files['csv']}", "--schema", str(tmp_path / "s.yaml")],
            tmp_path, "budget 1e\\+308: .*choose a smaller budget")


def test_damaged_tabular_files_are_robustkit_errors(tmp_path: Path, tabular_files: dict[str, Path]) -> None:
    raw = gzip.compress(tabular_files["csv"].read_bytes())
    (tmp_path / "t.csv.gz").write_bytes(raw[: len(raw) // 2])
    schema = str(tabular_files["schema"])
    refused(["harden", "tabular", "--data", f"csv:{tmp_path / 't.csv.gz'}", "--schema", schema], tmp_path,
            "cannot read .*t.csv.gz as csv")
    (tmp_path / "latin1.yaml").write_bytes(tabular_files["schema"].read_bytes() + "# caf\xe9\n".encode("latin-1"))
    refused(["harden", "tabular", "--data", f"csv:{tabular_files['csv']}", "--schema", str(tmp_path / "latin1.yaml")],
            tmp_path, "is not UTF-8 text")


def _edit_json(key: str, value: Any) -> Callable[[dict], Any]:
    def edit(meta: dict) -> Any:
        if key.startswith("spec."):
            meta["spec"][key[5:]] = value
        else:
            meta[key] = value
        return meta

    return edit


def _drop_column(meta: dict) -> dict:
    meta["spec"]["schema"]["columns"].pop(next(iter(meta["spec"]["schema"]["columns"])))
    return meta


MODEL_JSONS: dict[str, tuple[Callable[[dict], Any], str]] = {
    "truncated": (lambda meta: json.dumps(meta)[:100], "is not a readable model.json"),
    "a list": (lambda meta: [1, 2], "holds a JSON list"),
    "a \\xff byte": (lambda meta: b"\xff" + json.dumps(meta).encode(), "is not a readable model.json"),
    "spec a list": (_edit_json("spec", [1, 2]), "spec must be an object"),
    "spec null": (_edit_json("spec", None), "spec must be an object"),
    "threshold abc": (_edit_json("threshold", "abc"), "threshold must be null or a probability"),
    "threshold 1.5": (_edit_json("threshold", 1.5), "threshold must be null or a probability"),
    "threshold NaN": (_edit_json("threshold", math.nan), "threshold must be null or a probability"),
    "threshold 0": (_edit_json("threshold", 0), "threshold must be null or a probability"),
    "hidden big": (_edit_json("spec.hidden", "big"), "its spec does not describe a tabular model"),
    "a schema column missing": (_drop_column, "its spec does not describe a tabular model"),
    "NaN std": (lambda meta: _edit_json("spec.std", [math.nan] * len(meta["spec"]["std"]))(meta), "not finite"),
}


@pytest.mark.parametrize("name", sorted(MODEL_JSONS))
def test_a_damaged_model_json_is_refused_before_any_write(
    tmp_path: Path, tabular_files: dict[str, Path], name: str
) -> None:
    edit, match = MODEL_JSONS[name]
    model = tmp_path / "model"
    shutil.copytree(tabular_files["model"], model)
    content = edit(json.loads((model / "model.json").read_text()))
    (model / "model.json").write_bytes(content if isinstance(content, bytes)
                                       else (content if isinstance(content, str) else json.dumps(content)).encode())
    refused(["evaluate", "tabular", "--model", str(model), "--data", f"csv:{tabular_files['csv']}", "--schema",
             str(tabular_files["schema"])], tmp_path, match)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_weights_are_refused_before_any_write(
    tmp_path: Path, tabular_files: dict[str, Path], value: float
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tabular_files["model"], model)
    state = load_file(str(model / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] * value
    save_file(state, str(model / "model.safetensors"))
    refused(["evaluate", "tabular", "--model", str(model), "--data", f"csv:{tabular_files['csv']}", "--schema",
             str(tabular_files["schema"])], tmp_path, f"the weight '{re.escape(name)}' holds NaN or infinite")


NANS = """
import torch
from torch import nn


class Scaled(nn.Module):
    def __init__(self, classes, scale):
        super().__init__()
        self.classes, self.scale = classes, nn.Parameter(torch.tensor(scale))

    def forward(self, x):
        return x[:, : self.classes] * self.scale


def nan_net(classes):
    return Scaled(classes, float("nan"))


def net(classes):
    return Scaled(classes, 1.0)
"""


def test_a_factory_returning_nan_and_nan_weights_are_refused_before_any_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "nan_nets.py").write_text(NANS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "nan_nets", raising=False)
    refused(["harden", "toy", "--model-factory", "nan_nets:nan_net"], tmp_path, "not finite")
    save_file({"scale": torch.tensor(math.nan)}, str(tmp_path / "w.safetensors"))
    refused(["harden", "toy", "--model-factory", "nan_nets:net", "--weights", "w.safetensors"], tmp_path,
            "holds NaN or infinite values")


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from domains.text import TextDomain

    domain = TextDomain()
    data = domain.load_data("demo:40", 0, TextOptions())
    spec = domain.model_spec(data, TextOptions())
    folder = tmp_path_factory.mktemp("text") / "model"
    domain.save_model(domain.build_model(spec), folder, spec, 0.5)
    return folder


@pytest.mark.parametrize("content", [b"{nope", b'{"version": "1.0"}', b"\x80\x04\x95\x00pickle"])
def test_a_damaged_tokenizer_json_is_refused_before_any_write(tmp_path: Path, text_model: Path, content: bytes):
    model = tmp_path / "model"
    shutil.copytree(text_model, model)
    (model / "tokenizer.json").write_bytes(content)
    refused(["evaluate", "text", "--model", str(model), "--data", "demo:40"], tmp_path,
            "is not a tokenizer file the tokenizers library can read")


# ----------------------------------------------------------------------------- YAML
def test_a_yaml_key_given_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("epochs: 1\nepochs: 3\n")
    refused(["harden", "toy", "--config", str(tmp_path / "c.yaml")], tmp_path, "the key 'epochs' is given twice")


def test_a_yaml_alias_bomb_is_refused_fast(tmp_path: Path) -> None:
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(7):
        name, prev = chr(98 + i), chr(97 + i)
        levels.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    (tmp_path / "bomb.yaml").write_text("\n".join(levels) + "\n")
    start = time.perf_counter()
    refused(["harden", "toy", "--config", str(tmp_path / "bomb.yaml")], tmp_path, "an alias bomb")
    assert time.perf_counter() - start < 2
    (tmp_path / "big.yaml").write_text("# padding\n" * 200_000)
    refused(["harden", "toy", "--config", str(tmp_path / "big.yaml")], tmp_path, "more than the 1048576")


# ----------------------------------------------------------------------------- a failed start leaves nothing
def test_a_run_failing_before_its_first_checkpoint_leaves_nothing_that_blocks_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from robustkit import pipeline
    from robustkit.config import RunConfig

    def fails(name: str, method: str, domain: Any, data: Any, config: Any, out: Path, *rest: Any) -> None:
        raise RuntimeError("a failure inside training")

    def fails_after_a_checkpoint(name: str, method: str, domain: Any, data: Any, config: Any, out: Path,
                                 *rest: Any) -> None:
        (out / "checkpoints" / name).mkdir(parents=True, exist_ok=True)
        (out / "checkpoints" / name / "latest").write_text("epoch-0001\n")
        raise RuntimeError("a failure inside training")

    monkeypatch.setattr(pipeline, "_train", fails)
    config = RunConfig.from_dict({"domain": "toy", "epochs": 1, "threads": 1})
    with pytest.raises(RuntimeError):
        pipeline.harden(config, tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []
    pipeline.prepare_run_dir(tmp_path / "run", force=False, resume=False)  # the corrected command may start

    monkeypatch.setattr(pipeline, "_train", fails_after_a_checkpoint)
    with pytest.raises(RuntimeError):
        pipeline.harden(config, tmp_path / "run")
    assert (tmp_path / "run" / "config.yaml").is_file(), "a run with a checkpoint is kept, to be resumed"
