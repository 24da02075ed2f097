"""Writes that a reader never sees half done: the one atomic-write module of robustkit.

A process killed at any moment leaves every file and folder under its final name whole (or absent), and
at most hidden ``.NAME.*`` leftovers, which the next write removes. Files and folders get the modes a
plain ``open`` and ``mkdir`` would (the umask decides), and a full disk is reported as one
(:class:`~robustkit.errors.DiskFullError`, naming the path).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> atomic_write_text(folder / "note.txt", "whole")
    >>> (folder / "note.txt").read_text(), sorted(p.name for p in folder.iterdir())
    ('whole', ['note.txt'])
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

from robustkit.errors import DiskFullError

__all__ = ["atomic_write_dir", "atomic_write_text", "follow_umask", "remove_dir"]


#: errors that mean "the disk is full": no space, or the user's quota spent
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _disk_full(exc: BaseException, where: Path) -> bool:
    """Whether ``exc``, raised while writing under ``where``, is a full disk. The libraries' writers do not raise
    OSError: safetensors raises a SafetensorError naming the OS error ("os error 28"), and torch a RuntimeError
    ("unexpected pos") that says nothing, so that one counts when the disk has (almost) no room left."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL
    if any(f"(os error {code})" in str(exc) for code in _FULL):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    try:
        return shutil.disk_usage(where).free < 1 << 20
    except OSError:
        return False


@contextmanager
def _space_checked(path: Path) -> Iterator[None]:
    """Turn a full disk while writing ``path`` into a :class:`DiskFullError` that says so and names it."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as exc:
        if not _disk_full(exc, path.parent):
            raise
        raise DiskFullError(
            errno.ENOSPC, f"no space left on device while writing {path}: everything written before it is whole; "
            "free space on that disk, then continue the run (harden --resume; in Python, resume=True)"
        ) from None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give ``path`` (and, for a folder, everything in it) the modes a plain ``open`` and ``mkdir`` would: 0666 and
    0777 less the umask. Temporary files and folders are created 0600 and 0700, which would keep a shared
    machine's other users from reading a run."""
    mask = _umask()
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(root, name), dir_mode)
            for name in files:
                os.chmod(os.path.join(root, name), file_mode)
    os.chmod(path, dir_mode if path.is_dir() else file_mode)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _space_checked(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            follow_umask(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _discard(path: Path) -> None:
    """Remove a leftover file or folder."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_dir(path: str | os.PathLike[str]) -> None:
    """Delete a folder, first renaming it to a hidden ``.NAME.removed`` so it never lies half deleted under its name."""
    path = Path(path)
    trash = path.with_name(f".{path.name}.removed")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def atomic_write_dir(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Fill a folder with ``write(folder)`` under a temporary name, then rename it to ``path`` (replacing one there).

    A reader finds no folder, the old one or the whole new one at ``path``; leftovers of an earlier
    write that was killed (hidden ``.NAME.*`` siblings) are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*"):
        _discard(leftover)
    with _space_checked(path):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            write(tmp)
            follow_umask(tmp)
            if path.exists():
                remove_dir(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return path


