"""Shared disks: one writer per run directory (a lock that names its holder), runs never nested in runs, files
that follow the umask, and a checkpoint pointer that never leads outside its run."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from robustkit import pipeline
from robustkit.cli import main
from robustkit.errors import ConfigError, DiskFullError
from robustkit.files import atomic_write_dir, atomic_write_text
from robustkit.runlock import LOCK_NAME, RunLock, holder
from robustkit.training.checkpoint import load_checkpoint

TINY = ["toy", "--epochs", "1", "--batch-size", "300", "--preset", "quick", "--budgets", "0.25", "--threads", "1",
        "--quiet"]


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    threads = torch.get_num_threads()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    torch.set_num_threads(threads)
    return code, err.getvalue()


HOLD = textwrap.dedent("""
    import sys, time
    from robustkit.runlock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(60)
""")


def test_a_run_held_by_another_process_is_refused_with_its_pid_and_a_dead_holder_is_taken_over(tmp_path: Path):
    run = tmp_path / "run"
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        assert holder(run) is not None and holder(run)["pid"] == other.pid
        code, err = run_cli(["harden", *TINY, "--out", str(run)])
        assert code == 2 and f"is in use by pid {other.pid} on host " in err, err
        code, err = run_cli(["harden", *TINY, "--resume", str(run)])
        assert code == 2 and f"pid {other.pid}" in err, err
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    assert holder(run) is None, "the lock of a killed process is stale"
    with RunLock(run):  # and the next writer takes it over
        assert holder(run)["pid"] == os.getpid()


def test_two_writers_on_one_out_exactly_one_runs(tmp_path: Path) -> None:
    """Two real ``harden`` processes on one --out: one is refused, naming the other, which holds the lock and
    runs on (it is stopped once that is seen: a whole run would only add time)."""
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "robustkit", "harden", *TINY, "--out", str(run)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        deadline = time.monotonic() + 240
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = next(p for p in procs if p.poll() is not None)
        running = next(p for p in procs if p is not refused)
        err = refused.communicate()[1]
        assert refused.returncode == 2 and f"is in use by pid {running.pid} on host " in err, err
        assert running.poll() is None and holder(run)["pid"] == running.pid, "the other one runs, holding the lock"
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert holder(run) is None


def test_an_out_inside_a_run_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "examples").mkdir(parents=True)
    (run / "config.yaml").write_text("domain: toy\n")
    (run / "metrics.json").write_text("{}\n")
    (run / "examples" / "grid.png").write_bytes(b"png")
    for out in (run / "examples", run / "models" / "x"):
        code, err = run_cli(["harden", *TINY, "--out", str(out), "--force"])
        assert code == 2 and f"lies inside the run directory {run}" in err, err
    assert (run / "examples" / "grid.png").read_bytes() == b"png" and not (run / "models").exists()


def test_run_files_and_folders_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_dir(tmp_path / "d", lambda f: (f / "sub").mkdir() or (f / "sub" / "w.bin").write_bytes(b"1"))
        os.umask(0o027)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(tmp_path / "a.txt") == 0o644 and mode(tmp_path / "d" / "sub" / "w.bin") == 0o644
    assert mode(tmp_path / "d") == 0o755 and mode(tmp_path / "d" / "sub") == 0o755
    assert mode(tmp_path / "b.txt") == 0o640


@pytest.mark.parametrize("pointer", ["/etc\n", "../../elsewhere/epoch-0001\n", "epoch-0001/../../x\n", "\xff"])
def test_a_checkpoint_pointer_never_leads_outside_its_run(tmp_path: Path, pointer: str) -> None:
    outside = tmp_path / "elsewhere" / "epoch-0001"
    outside.mkdir(parents=True)
    (outside / "state.json").write_text("{}")
    ckpt = tmp_path / "run" / "checkpoints" / "standard"
    ckpt.mkdir(parents=True)
    (ckpt / "latest").write_text(pointer, encoding="latin-1")
    with pytest.raises(ConfigError, match="checkpoint pointer"):
        load_checkpoint(ckpt)


def test_the_lock_file_does_not_count_as_content(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunLock(run):
        assert [p.name for p in run.iterdir()] == [LOCK_NAME]
        pipeline._check_run_dir(run, force=False, resume=False)  # an empty run folder, not "not empty"
    assert list(run.iterdir()) == [], "removed at the end"
    started = time.time()
    with RunLock(run):
        assert holder(run)["started"] >= started


def test_a_full_disk_says_so_names_the_file_and_how_to_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC from Python, safetensors' writer (a SafetensorError naming the OS error) and torch's own writer,
    which reports a full disk only as "unexpected pos"."""
    def no_space(folder: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=r"no space left on device while writing .*ckpt.*--resume"):
        atomic_write_dir(tmp_path / "ckpt", no_space)

    def safetensors_full(folder: Path) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(DiskFullError, match="no space left on device"):  # said in its message, whatever the room
        atomic_write_dir(tmp_path / "ckpt", safetensors_full)

    def torch_full(folder: Path) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4160 vs 4054")

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 0))  # type: ignore[attr-defined]
    with pytest.raises(DiskFullError, match="no space left on device"):
        atomic_write_dir(tmp_path / "ckpt", torch_full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 30, 0, 10 << 30))  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="unexpected pos"):  # with room left it is not a full disk
        atomic_write_dir(tmp_path / "ckpt", torch_full)
    assert [p.name for p in tmp_path.iterdir()] == [], "nothing half written is left"


def test_a_full_disk_from_the_command_line_gives_the_resume_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object) -> None:
        raise DiskFullError(errno.ENOSPC, "no space left on device while writing X")

    monkeypatch.setattr(pipeline, "_harden", full)
    code, err = run_cli(["harden", *TINY, "--out", str(tmp_path / "run")])
    assert code == 2 and "no space left on device while writing X" in err
    assert f"continue with: robustkit harden toy --resume {tmp_path / 'run'}" in err
