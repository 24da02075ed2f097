"""Bring your own model: build it with a function the user names, ``package.module:function``.

``robustkit harden images --model-factory mypkg.nets:make_net`` trains the module that
``mypkg.nets.make_net(...)`` returns instead of the domain's reference model. The function is called
with the keyword arguments it declares, taken from the facts the domain knows about the data
(:meth:`robustkit.domain.Domain.model_arguments`: e.g. ``channels``, ``size`` and ``classes`` for
images). Starting weights, if any, come from a safetensors file (``--weights``), never from a pickle.

A saved model records the factory's name, but loading it never imports code named in a file: the
user passes the same ``--model-factory`` again, and a different or missing name is refused.

Example:
    >>> import torch
    >>> model = build_from_factory("torch.nn:Linear", {"in_features": 4, "out_features": 2, "classes": 2})
    >>> model(torch.zeros(1, 4)).shape
    torch.Size([1, 2])
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from robustkit.errors import ConfigError, ModelError
from robustkit.models import frozen_eval

__all__ = ["build_from_factory", "check_finite", "load_factory", "load_weights", "own_module"]


def load_factory(name: str) -> Callable[..., Any]:
    """The callable named ``package.module:attribute`` (the current folder is importable too).

    Example:
        >>> load_factory("torch.nn:Linear").__name__
        'Linear'
    """
    module_name, sep, attribute = name.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"--model-factory must look like package.module:function, got {name!r}")
    added = os.getcwd() not in sys.path
    if added:  # like `python -m`, a module in the current folder is found
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"--model-factory {name}: cannot import {module_name!r} ({exc}); install the package that defines it "
            "or run from the folder that holds it"
        ) from None
    except (Exception, SystemExit) as exc:  # the module itself fails (a syntax error, an exit at import)
        raise ConfigError(f"--model-factory {name}: importing {module_name!r} raised {type(exc).__name__}: "
                          f"{_short(exc)}; fix that module") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"--model-factory {name}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"--model-factory {name} is not callable")
    return target


def _short(exc: BaseException) -> str:
    """The first line of an exception's message (a syntax error's text spans several)."""
    return (str(exc).splitlines() or [""])[0][:300]


def _call_arguments(function: Callable[..., Any], name: str, available: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``available`` that ``function`` takes by name (all of it if it takes ``**kwargs``)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: call it without arguments
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict(available)
    chosen = {}
    for p in parameters:
        if p.name in available and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            chosen[p.name] = available[p.name]
        elif p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            raise ConfigError(
                f"--model-factory {name} needs the argument {p.name!r}, which robustkit cannot supply: give it a "
                f"default or use one of {', '.join(sorted(available))}"
            )
    return chosen


def check_finite(state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Refuse weights holding NaN or infinite values (a model built on them outputs no usable logits)."""
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise ConfigError(f"{source}: the weight {bad!r} holds NaN or infinite values; these weights are damaged")


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a safetensors state dict into ``model`` (strict: every name and shape must fit)."""
    path = Path(weights)
    if path.suffix != ".safetensors":
        raise ConfigError(
            f"--weights {path}: only .safetensors files are read (pickled .pt/.pth/.bin files can run code); "
            "convert with safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"
        )
    if not path.is_file():
        raise ConfigError(f"--weights {path} does not exist")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"--weights {path} is not a readable safetensors file ({exc})") from None
    check_finite(state, f"--weights {path}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"--weights {path} do not fit the factory's model ({detail[:300]})") from None


def build_from_factory(name: str, arguments: dict[str, Any], weights: str | Path | None = None) -> nn.Module:
    """Call the factory ``name`` with the ``arguments`` it declares; load ``weights`` (safetensors) if given."""
    function = load_factory(name)
    try:
        model = function(**_call_arguments(function, name, arguments))
    except ConfigError:
        raise
    except (Exception, SystemExit) as exc:  # the user's code failed (or tried to end the run): say where
        raise ConfigError(f"--model-factory {name} raised {type(exc).__name__}: {_short(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model-factory {name} returned a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(model, weights)
    return model


def own_module(module: Any, width: int, example: tuple[torch.Tensor, ...], contract: str) -> nn.Module:
    """An estimator's ``module=`` made ready to train, checked before any training step.

    ``module`` is a ``torch.nn.Module`` (trained as a copy: the parameter stays as given) or a function
    (a class too) that takes ``width``, the size of its input's last dimension, and returns one. The
    module is called once on ``example`` (eval mode, no gradients) and must return finite
    floating-point logits of shape ``(N, 2)``; every error repeats ``contract``, what it receives and returns.

    Example:
        >>> own_module(lambda width: torch.nn.Linear(width, 2), 3, (torch.zeros(4, 3),), "(N, 3) -> (N, 2)")
        Linear(in_features=3, out_features=2, bias=True)
        >>> own_module(torch.nn.Linear(3, 1), 3, (torch.zeros(4, 3),), "x -> y")
        Traceback (most recent call last):
        ...
        robustkit.errors.ModelError: module Linear returned a tensor of shape (4, 1) for 4 inputs: it must take x -> y
    """
    if isinstance(module, nn.Module):
        built, name = copy.deepcopy(module), type(module).__name__
    elif callable(module):
        name = getattr(module, "__qualname__", type(module).__name__)
        try:
            built = module(width)
        except Exception as exc:  # the user's code failed: say where
            raise ConfigError(f"module {name}({width}) raised {type(exc).__name__}: {_short(exc)}; it must return "
                              f"a torch.nn.Module that takes {contract}") from None
        if not isinstance(built, nn.Module):
            raise ConfigError(f"module {name}({width}) returned a {type(built).__name__}, not a torch.nn.Module")
    else:
        raise ConfigError(f"module must be a torch.nn.Module or a function of the input width returning one, got "
                          f"{type(module).__name__}")
    if not any(p.requires_grad for p in built.parameters()):
        raise ConfigError(f"module {name} has no trainable parameters: nothing would learn")
    n = len(example[0])
    with frozen_eval(built), torch.no_grad():
        try:
            out = built(*example)
        except Exception as exc:  # the user's forward does not fit the contract
            raise ModelError(f"module {name} failed on a batch of {n}: {type(exc).__name__}: {_short(exc)}; it must "
                             f"take {contract}") from None
    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or tuple(out.shape) != (n, 2):
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) and out.is_floating_point() \
            else f"a {out.dtype} tensor" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise ModelError(f"module {name} returned {got} for {n} inputs: it must take {contract}")
    if not torch.isfinite(out).all():
        raise ModelError(f"module {name} returned NaN or infinite logits at its initial weights")
    return built
