"""Folders that hold a fitted estimator without pickles, shared by the domains' ``save`` / ``load``.

A saved estimator is a folder: a JSON manifest (``classifier.json``) with the estimator's parameters,
its own state and the SHA-256 of every other file, beside files in formats that hold data only
(safetensors weights, tokenizer JSON, ...). :func:`write_folder` writes it atomically;
:func:`read_folder` refuses a pickle, a folder with missing or extra files and a file changed after it
was saved (:class:`~robustkit.errors.ModelError`), before anything is built from it.

Example:
    >>> import tempfile, torch
    >>> from safetensors.torch import save_file
    >>> with tempfile.TemporaryDirectory() as d:
    ...     state = module_state(torch.nn.Linear(2, 2))
    ...     folder = write_folder(f"{d}/clf", {"format": "demo", "version": 1},
    ...                           [lambda f: save_file(state, str(f / "model.safetensors"))])
    ...     meta = read_folder(folder, "demo", 1, "demo classifier")
    ...     sorted(meta["files"]), sorted(read_weights(folder / "model.safetensors"))
    (['model.safetensors'], ['bias', 'weight'])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from robustkit.errors import ConfigError, ModelError, RobustkitError
from robustkit.factory import check_finite
from robustkit.files import atomic_write_dir
from robustkit.training import methods as methods_mod

__all__ = ["MANIFEST", "check_module_given", "classes_from", "classes_meta", "load_folder", "method_config",
           "method_from", "module_state", "read_folder", "read_weights", "write_folder"]

#: the manifest of a saved estimator folder
MANIFEST = "classifier.json"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt", ".pth", ".bin", ".ckpt")


def digest(path: Path) -> str:
    """The SHA-256 of the file at ``path``, in hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def module_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights on the CPU, contiguous: what ``safetensors`` writes."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def check_json(meta: dict[str, Any], what: str) -> None:
    """Raise :class:`ConfigError` if ``meta`` cannot be written as JSON (before anything is written)."""
    try:
        json.dumps(meta, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot save {what} as JSON ({exc})") from None


def write_folder(path: str | Path, meta: dict[str, Any], writers: Sequence[Callable[[Path], object]]) -> Path:
    """Fill the folder ``path`` (replaced whole, atomically) with what ``writers`` write, then
    :data:`MANIFEST`: ``meta`` plus ``files``, the SHA-256 of each file written."""

    def write(folder: Path) -> None:
        for w in writers:
            w(folder)
        manifest = {**meta, "files": {p.name: digest(p) for p in sorted(folder.iterdir())}}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    return atomic_write_dir(path, write)


def _refuse_non_folder(path: Path, what: str) -> None:
    if path.is_file():
        head = path.read_bytes()[:2]
        kind = "a pickle" if head[:1] == b"\x80" or path.suffix in PICKLE_SUFFIXES else "a file"
        raise ModelError(f"{path} is {kind}, not a saved {what} folder: refused, nothing was loaded "
                         f"(pickles can run code; save with {what}.save(folder))")
    if not (path / MANIFEST).is_file():
        pickles = sorted(p.name for p in path.glob("*") if p.suffix in PICKLE_SUFFIXES) if path.is_dir() else []
        hint = f" (found {', '.join(pickles)}: pickles are refused, they can run code)" if pickles else ""
        raise ModelError(f"{path} is not a saved {what} folder: no {MANIFEST}{hint}")


def read_folder(path: str | Path, fmt: str, version: int, what: str) -> dict[str, Any]:
    """The manifest of the folder :func:`write_folder` wrote at ``path``, once its format is ``fmt``
    at ``version`` and every file it lists (and no other) has the SHA-256 it lists; ``what`` names the
    estimator in errors."""
    path = Path(path)
    _refuse_non_folder(path, what)
    try:
        meta = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path / MANIFEST} is not readable JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt or meta.get("version") != version:
        raise ModelError(f"{path / MANIFEST} is not a version-{version} {what} file")
    files = meta.get("files")
    present = {p.name for p in path.iterdir() if p.name != MANIFEST}
    if not isinstance(files, dict) or set(files) != present:
        raise ModelError(f"{path}: its files ({', '.join(sorted(present))}) are not those {MANIFEST} lists")
    for name, sha in files.items():
        if digest(path / name) != sha:
            raise ModelError(f"{path / name} was changed after it was saved (SHA-256 differs): refused")
    return meta


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The safetensors state at ``path``, refused if unreadable or not finite."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{path} is not a readable safetensors file ({exc})") from None
    check_finite(state, path)
    return state


def method_config(method: Any, extra: Sequence[str] = ()) -> Any:
    """A training method as JSON: its name, or a robustkit method object's ``config()`` (core methods
    and the domain's ``extra`` names); any other object is refused."""
    if isinstance(method, str):
        return method
    config = dict(method.config())
    if config.get("name") not in (*methods_mod.NAMES, *extra):
        raise ModelError(f"cannot save method {type(method).__name__}: only robustkit's methods are saved")
    return config


def method_from(value: Any, extra: dict[str, Callable[..., Any]] | None = None) -> Any:
    """The method :func:`method_config` saved: a name, or an object rebuilt by ``extra[name]`` or
    :func:`robustkit.training.methods.get`."""
    if isinstance(value, str):
        return value
    options = dict(value)
    name = options.pop("name")
    build = (extra or {}).get(name)
    return build(**options) if build is not None else methods_mod.get(name, **options)


def classes_meta(classes: np.ndarray, pos_label: Any) -> dict[str, Any]:
    """``classes_`` and which of them is ``pos_label_``, as JSON (their dtype kept)."""
    classes = np.asarray(classes)
    return {"classes": classes.tolist(), "classes_dtype": classes.dtype.str if classes.dtype != object else "object",
            "pos_label_index": int(np.flatnonzero(classes == pos_label)[0])}


def classes_from(meta: dict[str, Any]) -> tuple[np.ndarray, Any]:
    """``classes_`` and ``pos_label_`` from what :func:`classes_meta` saved."""
    classes = np.asarray(meta["classes"], dtype=np.dtype(meta["classes_dtype"]))
    return classes, classes[int(meta["pos_label_index"])]



def check_module_given(meta: dict[str, Any], module: Any, path: Path) -> None:
    """Refuse to load an estimator trained with ``module=`` without it, or one trained without it with one:
    a module's code is never saved, so the caller passes the same one again."""
    if meta.get("module") and module is None:
        raise ModelError(f"{path} was trained with your own module=: pass the same one again, "
                         "load(path, module=...) (its code is not saved, only its weights)")
    if not meta.get("module") and module is not None:
        raise ConfigError(f"{path} was trained with the built-in model, not a module=: load it without module")


T = TypeVar("T")


def load_folder(path: str | Path, fmt: str, version: int, what: str, module: Any,
                build: Callable[[Path, dict[str, Any], Any], T]) -> T:
    """An estimator from the folder at ``path``: its files checked (:func:`read_folder`), ``module`` checked
    against what it was trained with, then ``build(path, manifest, module)``; a manifest that does not
    describe a fitted estimator is a :class:`~robustkit.errors.ModelError`."""
    path = Path(path)
    meta = read_folder(path, fmt, version, what)
    check_module_given(meta, module, path)
    try:
        return build(path, meta, module)
    except RobustkitError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        raise ModelError(f"{path / MANIFEST} does not describe a fitted {what} ({exc})") from None
