"""DDP on CPU (gloo, 2 processes under torchrun) gives the single-process results.

Each run is ``tests/ddp_worker.py``: train a small MLP for 3 epochs (global batch 32, 251
examples, so the 2-process sampler pads one copy that must not count), validate, then evaluate
with the checks. Compared: weights, history and the evaluation report with its per-example
outcomes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import robustkit as rk

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the DDP launch tests use POSIX file locks")

WORKER = Path(__file__).with_name("ddp_worker.py")
#: Weights after 3 epochs differ by float rounding only (a gradient summed over two halves of a batch
#: then averaged, instead of over the whole batch); measured differences are ~5e-8.
WEIGHT_TOL = 1e-5


@contextlib.contextmanager
def _one_launch_at_a_time() -> Iterator[None]:
    """Serialise torchrun launches across pytest-xdist workers: each launcher picks a free port for its
    workers and releases it before they bind it, so two launches at once can collide."""
    import fcntl  # POSIX; the module is skipped on Windows

    with open(Path(tempfile.gettempdir()) / "robustkit-ddp-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(out: Path, *extra: str, processes: int = 1, epochs: int = 3, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    start = launcher if processes > 1 else [sys.executable]
    command = [*start, str(WORKER), str(out), "--epochs", str(epochs), *extra]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    with _one_launch_at_a_time():
        done = subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"{command} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def _load(out: Path) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]], dict[str, Any]]:
    history = json.loads((out / "history.json").read_text())
    report = json.loads((out / "report.json").read_text())
    return torch.load(out / "weights.pt"), history, report


def _without_seconds(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


def _assert_same(single: Path, other: Path, epochs: int = 3) -> None:
    w1, h1, r1 = _load(single)
    w2, h2, r2 = _load(other)
    assert w1.keys() == w2.keys()
    for key in w1:
        assert torch.allclose(w1[key], w2[key], atol=WEIGHT_TOL, rtol=0), key
    assert [r["epoch"] for r in h1] == [r["epoch"] for r in h2] == list(range(1, epochs + 1))
    for a, b in zip(h1, h2, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        for key in ("train_accuracy", "val_clean_accuracy", "val_robust_accuracy", "val_robust_balanced_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=1e-9), key
    # every example counted once, in data order, with its own random streams
    assert r2["n_examples"] == r1["n_examples"] == len(r1["outcomes"]["label"]) == 103
    assert _without_seconds(r1) == _without_seconds(r2)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single")
    _run(out)
    return out


def test_two_processes_train_and_evaluate_like_one(single: Path, tmp_path: Path) -> None:
    _run(tmp_path, processes=2)
    _assert_same(single, tmp_path)


def test_killed_ddp_run_resumes_to_the_uninterrupted_result(single: Path, tmp_path: Path) -> None:
    killed = _run(tmp_path, processes=2, env={"ROBUSTKIT_KILL_AT": "1:3"}, check=False)
    assert killed.returncode != 0 and not (tmp_path / "weights.pt").exists()
    assert (tmp_path / "checkpoints" / "epoch-0001").is_dir()  # only the first epoch was saved
    _run(tmp_path, "--resume", processes=2)
    _assert_same(single, tmp_path)


def test_trades_under_ddp_matches_one_process(tmp_path: Path) -> None:
    """TRADES runs two forward passes through the DDP wrapper before one backward.

    Two steps only: TRADES's inner maximisation starts 1e-3 from x, where the KL gradient is a
    difference of two nearly equal softmaxes, so the 1e-8 rounding of DDP's gradient average flips
    the sign of some input-gradient components from the third step on (weights then differ by ~1e-3,
    measured). That is float chaos, not a sharding error: the attack itself is batch-independent.
    """
    _run(tmp_path / "one", "--method", "trades", "--n-train", "64", epochs=1)
    _run(tmp_path / "two", "--method", "trades", "--n-train", "64", epochs=1, processes=2)
    _assert_same(tmp_path / "one", tmp_path / "two", epochs=1)


def test_streamed_training_shards_chunks_with_equal_steps(tmp_path: Path) -> None:
    """An uneven number of chunks would leave one process waiting forever for the other's step."""
    _run(tmp_path, "--stream", processes=2)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert all(r["train_loss"] == r["train_loss"] for r in history)  # not NaN


def test_unsharded_training_loader_is_refused(tmp_path: Path) -> None:
    done = _run(tmp_path, "--plain-loader", processes=2, check=False)
    assert done.returncode != 0
    assert "needs a DistributedSampler" in done.stderr


def test_cli_harden_under_torchrun_writes_one_complete_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "robustkit",
               "harden", "images", "--out", str(out), "--epochs", "1", "--preset", "quick", "--threads", "1"]
    with _one_launch_at_a_time():
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run: ") == 1  # rank 1 stays silent
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"standard", "hardened"}
    assert metrics["dataset"]["name"] == "digits"
    assert not list(out.rglob(".*"))  # no temporary file or folder left by a second writer


def test_a_batch_the_processes_cannot_share_is_refused_before_any_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from robustkit import distributed, pipeline
    from robustkit.config import RunConfig

    monkeypatch.setattr(distributed, "world_size", lambda: 3)  # as if started by torchrun with 3 processes
    with pytest.raises(rk.ConfigError, match="multiple of the number of processes"):
        pipeline.harden(RunConfig(domain="images", epochs=1, batch_size=64), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    distributed.check_batch_size(63)
