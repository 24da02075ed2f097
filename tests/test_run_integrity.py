"""A run directory is never seen half written: files and folders go in under temporary names and are renamed.

The kill campaign (``python tests/kill_campaign.py``) kills real ``harden`` runs at random moments; these
tests pin each fix it led to, fast.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from domains.toy import ToyOptions
from robustkit import pipeline
from robustkit.config import RunConfig
from robustkit.errors import ConfigError
from robustkit.files import atomic_write_dir
from robustkit.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from tests.toy_domain import SmallToyDomain


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def half_written_then_killed(*args: object) -> None:
    """A domain writer (of examples or a model) that dies after writing half a file: kill -9, in process."""
    directory = next(a for a in args if isinstance(a, Path))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.safetensors").write_bytes(b"\x08\x00\x00")
    raise KeyboardInterrupt


def test_a_folder_write_killed_midway_leaves_the_old_folder_whole(tmp_path):
    target = tmp_path / "examples"
    atomic_write_dir(target, lambda folder: (folder / "a.txt").write_text("old"))
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from robustkit.files import atomic_write_dir

        def write(folder):
            (folder / "a.txt").write_text("ha")
            os.kill(os.getpid(), signal.SIGKILL)

        atomic_write_dir(Path({str(target)!r}), write)
    """)
    assert subprocess.run([sys.executable, "-c", script], check=False).returncode == -signal.SIGKILL
    assert visible(tmp_path) == ["examples"] and (target / "a.txt").read_text() == "old"
    assert len(list(tmp_path.iterdir())) == 2  # the killed write's temporary folder, hidden
    atomic_write_dir(target, lambda folder: (folder / "b.txt").write_text("new"))
    assert [p.name for p in tmp_path.iterdir()] == ["examples"], "the next write removes the leftovers"
    assert visible(target) == ["b.txt"]


@pytest.fixture
def toy() -> tuple[SmallToyDomain, object, RunConfig, torch.nn.Module]:
    domain = SmallToyDomain()
    data = domain.load_data("toy", 0, ToyOptions())
    config = pipeline._resolve(RunConfig(domain="toy-small", preset="quick"), domain)
    torch.manual_seed(0)
    return domain, data, config, domain.make_model(domain.model_spec(data, ToyOptions())).eval()


def test_examples_are_never_half_written_under_their_final_name(toy, tmp_path, monkeypatch):
    domain, data, config, model = toy
    out = tmp_path / "run"
    pipeline._write_examples(domain, model, data, config, out, 4)
    before = load_file(str(out / "examples" / "examples.safetensors"))
    monkeypatch.setattr(domain, "write_examples", half_written_then_killed)
    with pytest.raises(KeyboardInterrupt):
        pipeline._write_examples(domain, model, data, config, out, 4)
    assert visible(out / "examples") == ["examples.safetensors"]
    after = load_file(str(out / "examples" / "examples.safetensors"))
    assert all(after[k].equal(v) for k, v in before.items()), "the complete examples/ stays as it was"
    (tmp_path / "fresh").mkdir()
    with pytest.raises(KeyboardInterrupt):
        pipeline._write_examples(domain, model, data, config, tmp_path / "fresh", 4)
    assert visible(tmp_path / "fresh") == []


def test_an_evaluated_model_is_never_half_written_under_its_final_name(toy, tmp_path, monkeypatch):
    domain, data, _, model = toy
    saved = tmp_path / "model"
    domain.save_model(model, saved, domain.model_spec(data, ToyOptions()))
    monkeypatch.setattr(SmallToyDomain, "save_model", half_written_then_killed)
    out = tmp_path / "eval"
    with pytest.raises(KeyboardInterrupt):
        pipeline.evaluate_model(RunConfig(domain="toy-small", model=str(saved), preset="quick"), out)
    assert visible(out) == ["config.yaml", "models"] and visible(out / "models") == []


def test_a_checkpoint_save_removes_what_killed_saves_left(tmp_path):
    root = tmp_path / "ckpt"
    weights = {"w": torch.zeros(2)}
    save_checkpoint(root, 1, weights, {}, {"epoch": 1})
    killed = root / ".epoch-0002.k1ll3d"  # a save killed while writing its files
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"\x08\x00")
    (root / ".latest.k1ll3d").write_text("epoch-00")  # ... or while pointing latest at it
    save_checkpoint(root, 2, {"w": torch.ones(2)}, {}, {"epoch": 2})
    assert sorted(p.name for p in root.iterdir()) == ["epoch-0002", "latest"]
    save_checkpoint(root, 3, weights, {}, {"epoch": 3})
    (root / "latest").write_text("epoch-0002\n")  # killed after renaming epoch-0003 in, before moving latest
    save_checkpoint(root, 3, {"w": torch.full((2,), 3.0)}, {}, {"epoch": 3})  # the resumed run saves it again
    assert sorted(p.name for p in root.iterdir()) == ["epoch-0003", "latest"]
    assert latest_checkpoint(root).name == "epoch-0003" and load_checkpoint(root)[0]["w"].tolist() == [3.0, 3.0]


def test_a_force_killed_while_clearing_the_old_run_is_never_resumed(tmp_path, monkeypatch):
    out = tmp_path / "run"
    for name in ("checkpoints/standard/latest", "models/standard/model.json", "config.yaml", "metrics.json"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("old")

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        pipeline._clear(out)
    assert not (out / "metrics.json").exists() and not (out / "config.yaml").exists()
    with pytest.raises(ConfigError, match=r"no config\.yaml"):
        pipeline.prepare_run_dir(out, force=False, resume=True)
    with pytest.raises(ConfigError, match="--force") as refused:
        pipeline.prepare_run_dir(out, force=False, resume=False)
    assert "--resume" not in str(refused.value), "no advice to resume what cannot be resumed"
    pipeline.prepare_run_dir(out, force=True, resume=False)
