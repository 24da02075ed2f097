"""Checkpoints that a reader never sees half-written, and that load without running code.

A checkpoint is a folder ``epoch-NNNN`` holding ``model.safetensors`` (weights), ``trainer.pt``
(optimizer, scheduler and RNG states: tensors and plain values only, loaded with
``weights_only=True``), optional extra ``*.safetensors`` states, and ``state.json``. It is written under
a temporary name and renamed into place; the file ``latest`` then names it, and older ones are removed.

The same helpers write a run directory's files and folders (:func:`atomic_write_text`,
:func:`atomic_write_dir`): a process killed at any moment leaves every file and folder under its final
name whole (or absent), and at most hidden ``.NAME.*`` leftovers, which the next write removes.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from robustkit.errors import ConfigError, DiskFullError

__all__ = ["atomic_write_dir", "atomic_write_text", "follow_umask", "latest_checkpoint", "load_checkpoint",
           "remove_dir", "save_checkpoint"]


#: errors that mean "the disk is full": no space, or the user's quota spent
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _disk_full(exc: BaseException, where: Path) -> bool:
    """Whether ``exc``, raised while writing under ``where``, is a full disk. torch's own writer reports one only
    as a RuntimeError ("unexpected pos"), so a RuntimeError counts when the disk has (almost) no room left."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL
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
    except (OSError, RuntimeError) as exc:
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


def _cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_checkpoint(
    directory: str | os.PathLike[str],
    epoch: int,
    model_state: dict[str, torch.Tensor],
    trainer_state: dict[str, Any],
    state: dict[str, Any],
    extra_weights: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write checkpoint ``epoch`` into ``directory`` atomically and point ``latest`` at it."""
    root = Path(directory)
    name = f"epoch-{epoch:04d}"

    def write(folder: Path) -> None:
        save_file(_cpu_state(model_state), str(folder / "model.safetensors"))
        for key, weights in (extra_weights or {}).items():
            save_file(_cpu_state(weights), str(folder / f"{key}.safetensors"))
        torch.save(trainer_state, folder / "trainer.pt")
        (folder / "state.json").write_text(json.dumps(state, indent=1, default=float), encoding="utf-8")

    final = atomic_write_dir(root / name, write)
    atomic_write_text(root / "latest", name + "\n")
    for old in root.glob("epoch-*"):
        if old.name != name:
            remove_dir(old)
    for leftover in [*root.glob(".epoch-*"), *root.glob(".latest.*")]:  # what saves that were killed left
        _discard(leftover)
    return final


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path:
    """The checkpoint folder that ``directory/latest`` names (or ``directory`` itself if it is one)."""
    path = Path(directory)
    if (path / "state.json").is_file():
        return path
    pointer = path / "latest"
    if not pointer.is_file():
        raise ConfigError(f"no checkpoint found in {path}: expected a 'latest' file written by a previous fit")
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"checkpoint pointer {pointer} is unreadable ({exc}): remove it and start again") from None
    if not re.fullmatch(r"epoch-\d{4,}", name):  # never a path: a checkpoint is read from inside the run only
        raise ConfigError(f"checkpoint pointer {pointer} names {name[:80]!r}, not a checkpoint of this folder "
                          "(epoch-NNNN): it was damaged or tampered with; remove it and start again")
    found = path / name
    if not (found / "state.json").is_file():
        raise ConfigError(f"checkpoint {found} is incomplete: remove it and resume from an earlier run")
    return found


def load_checkpoint(
    directory: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Model weights, trainer state, ``state.json`` and extra weights of the latest checkpoint.

    Nothing here unpickles arbitrary objects: weights are safetensors and ``trainer.pt`` is read
    with ``torch.load(weights_only=True)``.
    """
    path = latest_checkpoint(directory)
    try:
        model_state = load_file(str(path / "model.safetensors"), device=str(device))
        trainer_state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        extra = {
            p.stem: load_file(str(p), device=str(device)) for p in path.glob("*.safetensors") if p.stem != "model"
        }
    except (SafetensorError, pickle.UnpicklingError, json.JSONDecodeError, OSError, RuntimeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(
            f"checkpoint {path} is damaged or was tampered with ({first}); nothing was loaded from it: "
            "remove it and resume from an earlier checkpoint or start again"
        ) from None
    return model_state, trainer_state, state, extra
