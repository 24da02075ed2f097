"""An ensemble of attacks: each runs only on the examples that survived the ones before it.

The result is the worst case per example over the attacks (an example is broken if any attack breaks
it), at the cost of running the later, often slower attacks only on what is left.

Example:
    >>> import torch, robustkit as rk
    >>> space = rk.LinfBall(eps=0.1, bounds=(0.0, 1.0))
    >>> attack = rk.Ensemble([rk.APGD(space, steps=10), rk.RandomSearch(space, queries=20)])
    >>> x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
    >>> result = attack(torch.nn.Linear(4, 3), x, y)
    >>> [a["name"] for a in result.info["attacks"]]
    ['apgd', 'random_search']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustkit.attacks.base import Attack, AttackResult
from robustkit.errors import ConfigError
from robustkit.spaces import PerturbationSpace

__all__ = ["Ensemble"]


class Ensemble:
    """Run attacks in order, each on the examples still robust; the first success per example wins.

    Called like an :class:`~robustkit.attacks.base.Attack` and returns an
    :class:`~robustkit.attacks.base.AttackResult`: ``x_adv`` and ``loss`` of an example come from
    the first attack that broke it (from the first attack if none did), ``success`` is the union,
    pass counts are summed, and ``info["attacks"]`` lists per attack its name, the examples it
    attacked, the successes it added, its passes and its own ``info``.

    Args:
        attacks: the attacks, in the order to run them; all over the same space, all targeted or none.

    Example:
        >>> import torch, robustkit as rk
        >>> space = rk.LinfBall(eps=0.5)
        >>> result = rk.Ensemble([rk.FGSM(space), rk.PGD(space, steps=5)])(
        ...     torch.nn.Linear(2, 2), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
        >>> sum(a["successes"] for a in result.info["attacks"]) == int(result.success.sum())
        True
    """

    name = "ensemble"

    def __init__(self, attacks: Sequence[Attack]) -> None:
        try:
            attacks = list(attacks)
        except TypeError:
            raise ConfigError(f"Ensemble takes a list of attacks, got {attacks!r}: pass [attack, ...]") from None
        if not attacks:
            raise ConfigError("Ensemble needs at least one attack: pass e.g. [rk.APGD(space), rk.RandomSearch(space)]")
        for attack in attacks:
            if not isinstance(attack, Attack):
                raise ConfigError(f"Ensemble members must be robustkit attacks (e.g. rk.APGD), got {attack!r}")
        if len({attack.targeted for attack in attacks}) > 1:
            raise ConfigError("Ensemble mixes targeted and untargeted attacks: build all with the same targeted=")
        first = attacks[0].space
        for attack in attacks[1:]:
            if type(attack.space) is not type(first) or attack.space.budget != first.budget:
                raise ConfigError(
                    f"Ensemble members attack different spaces ({first!r} and {attack.space!r}): "
                    "build every attack with the same space"
                )
        self.attacks = attacks

    @property
    def space(self) -> PerturbationSpace:
        """The space the member attacks share."""
        return self.attacks[0].space

    @property
    def targeted(self) -> bool:
        return self.attacks[0].targeted

    def config(self) -> dict[str, Any]:
        """The members' names and settings, in order, for reports and ``metrics.json``."""
        return {"attacks": [{"name": attack.name, **attack.config()} for attack in self.attacks]}

    def with_space(self, space: PerturbationSpace) -> Ensemble:
        """A copy of this ensemble over another space (another budget)."""
        return Ensemble([attack.with_space(space) for attack in self.attacks])

    def __repr__(self) -> str:
        return f"{type(self).__name__}([{', '.join(repr(attack) for attack in self.attacks)}])"

    def __call__(
        self,
        model: nn.Module,
        x: Any,
        y: torch.Tensor | Sequence[int],
        *,
        mask: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
    ) -> AttackResult:
        """Attack the examples selected by ``mask``; the arguments are those of :meth:`Attack.__call__`."""
        result = self.attacks[0](model, x, y, mask=mask, target=target, ids=ids)
        report = [self._report(self.attacks[0], result, result.attacked, result.success & result.attacked)]
        for attack in self.attacks[1:]:
            todo = result.attacked & ~result.success
            if not bool(todo.any()):
                report.append({"name": attack.name, "attacked": 0, "successes": 0, "forward_passes": 0,
                               "backward_passes": 0, "info": {}})
                continue
            later = attack(model, x, y, mask=todo, target=target, ids=ids)
            new = later.success & todo
            result.x_adv = _where(new, later.x_adv, result.x_adv)
            result.loss = torch.where(new, later.loss.to(result.loss.dtype), result.loss)
            result.success = result.success | new
            result.forward_passes += later.forward_passes
            result.backward_passes += later.backward_passes
            report.append(self._report(attack, later, todo, new))
        result.info = {"attacks": report}
        return result

    @staticmethod
    def _report(attack: Attack, result: AttackResult, todo: torch.Tensor, new: torch.Tensor) -> dict[str, Any]:
        return {
            "name": attack.name,
            "attacked": int(todo.sum()),
            "successes": int(new.sum()),
            "forward_passes": result.forward_passes,
            "backward_passes": result.backward_passes,
            "info": result.info,
        }


def _where(take: torch.Tensor, new: Any, old: Any) -> Any:
    """``new[i]`` where ``take[i]`` else ``old[i]``, for tensors or lists of objects (discrete spaces)."""
    if isinstance(new, torch.Tensor) and isinstance(old, torch.Tensor):
        return torch.where(take.view(-1, *([1] * (old.dim() - 1))), new.to(old.dtype), old)
    return [b if t else a for t, a, b in zip(take.tolist(), old, new, strict=True)]
