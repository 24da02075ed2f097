"""One writer per run directory: an exclusive lock held from a run's first write to its end.

The lock is ``RUN/.robustkit.lock``, locked with ``fcntl.flock`` and holding the holder's pid, host and
start time (JSON); a run removes it when it ends. The operating system releases a ``flock`` when its process
ends, however it ends (``kill -9`` included), so a lock file left by a dead process is stale by construction:
the next run takes it over. A second process is refused with the holder's pid and host, both when it starts
and, if it got past that check while the holder was still starting, at its own first write.

Example:
    >>> import tempfile, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> with RunLock(run):
    ...     holder(run)["pid"] == os.getpid()
    True
    >>> holder(run) is None
    True
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from robustkit.errors import ConfigError

__all__ = ["LOCK_NAME", "RunLock", "check_free", "holder"]

#: the lock file inside a run directory (hidden: it is not part of the run's results)
LOCK_NAME = ".robustkit.lock"


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process (it has not written its pid yet)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("started", 0))))
    return f"pid {info.get('pid')} on host {info.get('host')} (since {since})"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def holder(run: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Who holds the lock of ``run`` (pid, host, started), or None if no live process does. Writes nothing."""
    path = Path(run) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read(path) or {}
    finally:
        os.close(fd)  # closing drops the shared lock taken to test it
    return None


def check_free(run: str | os.PathLike[str]) -> None:
    """Raise :class:`ConfigError` naming the holder if a live process holds the lock of ``run``."""
    info = holder(run)
    if info is not None:
        raise ConfigError(f"{run} is in use by {_describe(info)}: wait for that run to end or choose another --out")


class RunLock:
    """The exclusive lock of a run directory: :meth:`acquire` (creating the folder) and :meth:`release`, or a
    ``with`` block."""

    def __init__(self, run: str | os.PathLike[str]) -> None:
        self.run = Path(run)
        self.fd: int | None = None

    def acquire(self) -> None:
        self.run.mkdir(parents=True, exist_ok=True)
        path = self.run / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise ConfigError(f"{self.run} is in use by {_describe(_read(path))}: wait for that run to end or "
                                  "choose another --out") from None
            try:  # the holder before may have removed the file between our open and our lock: lock the new one
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode("utf-8"))
        self.fd = fd

    def release(self) -> None:
        """Remove the lock file (while still holding it), then unlock."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.run / LOCK_NAME)
            os.close(self.fd)  # closing releases the flock
            self.fd = None

    close = release  # for contextlib.closing

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
