"""Checkpoints that a reader never sees half-written, and that load without running code.

A checkpoint is a folder ``epoch-NNNN`` holding ``model.safetensors`` (weights), ``trainer.pt``
(optimizer, scheduler and RNG states: tensors and plain values only, loaded with
``weights_only=True``), optional extra ``*.safetensors`` states, and ``state.json``. It is written under
a temporary name and renamed into place; the file ``latest`` then names it, and older ones are removed.

Folders and files are written with :mod:`robustkit.files`, the one atomic-write module.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from robustkit.errors import ConfigError
from robustkit.files import _discard, atomic_write_dir, atomic_write_text, remove_dir

__all__ = ["latest_checkpoint", "load_checkpoint", "save_checkpoint"]


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
