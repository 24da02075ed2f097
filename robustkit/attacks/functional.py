"""One-line attacks for torchattacks users: ``x_adv = rk.attack(model, x, y, eps=0.3, norm="Linf", steps=10)``.

:func:`attack` returns the adversarial tensor; :func:`attack_result` runs the same attack and returns
the full :class:`~robustkit.attacks.base.AttackResult` (success per example, pass counts, info).

Example:
    >>> import torch, robustkit as rk
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x, y = torch.rand(5, 1, 4, 4), torch.randint(0, 3, (5,))
    >>> x_adv = rk.attack(model, x, y, eps=0.1, norm="Linf", steps=10)
    >>> x_adv.shape, bool((x_adv - x).abs().max() <= 0.1 + 1e-6)
    (torch.Size([5, 1, 4, 4]), True)
    >>> result = rk.attack_result(model, x, y, eps=0.5, norm="L2", method="pgd", steps=5)
    >>> result.success.shape, result.backward_passes <= 5 * 5
    (torch.Size([5]), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustkit.attacks.apgd import APGD
from robustkit.attacks.base import AttackResult
from robustkit.attacks.ensemble import Ensemble
from robustkit.attacks.fab import FAB
from robustkit.attacks.pgd import FGSM, PGD
from robustkit.attacks.square import Square
from robustkit.errors import ConfigError
from robustkit.models import frozen_eval, logits_of, model_device
from robustkit.spaces import ContinuousSpace, L2Ball, LinfBall

__all__ = ["METHODS", "attack", "attack_result"]

#: What ``method=`` takes.
METHODS = ("apgd", "apgd-dlr", "pgd", "fgsm", "fab", "square", "autoattack")
_NORMS: dict[str, type[ContinuousSpace]] = {"linf": LinfBall, "inf": LinfBall, "l2": L2Ball, "2": L2Ball}


def attack_result(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | Sequence[int],
    *,
    eps: float,
    norm: str = "Linf",
    steps: int | None = None,
    method: str = "apgd",
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
) -> AttackResult:
    """Run one untargeted attack on ``(x, y)`` and return its full result (see :func:`attack`)."""
    space_type = _NORMS.get(str(norm).lower())
    if space_type is None:
        raise ConfigError(f"norm must be 'Linf' or 'L2', got {norm!r}")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if steps is not None and (isinstance(steps, bool) or int(steps) < 1):
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    space = space_type(eps=eps, bounds=bounds)
    if method == "autoattack":
        from robustkit.evaluation.presets import PRESETS  # evaluation builds on attacks, not the reverse

        with torch.no_grad(), frozen_eval(model):
            n_classes = logits_of(model(x[:1].to(model_device(model)))).shape[1]
        members = [spec.build(space, seed) for spec in PRESETS["autoattack"].attacks_for(n_classes)]
        return Ensemble(members)(model, x, y)
    built: Any
    if method == "fgsm":
        built = FGSM(space, seed=seed)
    elif method == "pgd":
        built = PGD(space, steps=steps or 10, seed=seed)
    elif method in ("apgd", "apgd-dlr"):
        built = APGD(space, steps=steps or 100, loss="dlr" if method == "apgd-dlr" else "ce", seed=seed)
    elif method == "fab":
        built = FAB(space, steps=steps or 100, seed=seed)
    else:
        built = Square(space, queries=steps or 5000, seed=seed)
    return built(model, x, y)


def attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | Sequence[int],
    *,
    eps: float,
    norm: str = "Linf",
    steps: int | None = None,
    method: str = "apgd",
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
) -> torch.Tensor:
    """Adversarial versions of ``x`` against ``model`` within ``eps`` in ``norm``, inside ``bounds``.

    Args:
        model: a module returning logits; its mode and ``requires_grad`` flags are restored.
        x: clean inputs (e.g. images in [0, 1]); y: their true classes.
        eps: the budget; norm: "Linf" or "L2".
        steps: iterations (queries for "square"); default: 10 for PGD, 100 for APGD and FAB, 5000 for Square.
        method: "apgd" (default, cross-entropy), "apgd-dlr", "pgd", "fgsm", "fab" (FAB-T, 9 targets),
            "square" or "autoattack" (AutoAttack's standard attacks, each on the examples still robust).
        bounds: the valid input range.
        seed: seed of the random starts.

    Returns the adversarial tensor (same shape and device as ``x`` on the model's device); examples not
    broken come back as the attack's best point. :func:`attack_result` gives the full result.
    """
    return attack_result(model, x, y, eps=eps, norm=norm, steps=steps, method=method, bounds=bounds,
                         seed=seed).x_adv
