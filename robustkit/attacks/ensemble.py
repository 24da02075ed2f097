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

from robustkit.attacks.base import Attack, Best, Problem
from robustkit.errors import ConfigError
from robustkit.spaces import PerturbationSpace

__all__ = ["Ensemble"]


class Ensemble(Attack):
    """Run attacks in order, each on the examples still robust; the first success per example wins.

    An :class:`~robustkit.attacks.base.Attack` itself, so it goes wherever one does (``rk.evaluate``, another
    ensemble, the chunking that splits a batch too large for memory). ``x_adv`` and ``loss`` of an example
    come from the first attack that broke it (from the first attack if none did), ``success`` is the union,
    pass counts are summed, and ``info["attacks"]`` lists per attack its name, the examples it attacked,
    the successes it added and its passes.

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
        first = attacks[0]
        for attack in attacks[1:]:
            if type(attack.space) is not type(first.space) or attack.space.budget != first.space.budget:
                raise ConfigError(
                    f"Ensemble members attack different spaces ({first.space!r} and {attack.space!r}): "
                    "build every attack with the same space"
                )
        super().__init__(first.space, targeted=first.targeted, seed=first.seed)
        self.attacks = attacks

    @property
    def members(self) -> list[Attack]:
        return [member for attack in self.attacks for member in attack.members]

    def config(self) -> dict[str, Any]:
        """The members' names and settings, in order, for reports and ``metrics.json``."""
        return {"attacks": [{"name": attack.name, **attack.config()} for attack in self.attacks]}

    def with_space(self, space: PerturbationSpace) -> Ensemble:
        """A copy of this ensemble over another space (another budget)."""
        return Ensemble([attack.with_space(space) for attack in self.attacks])

    def __repr__(self) -> str:
        return f"{type(self).__name__}([{', '.join(repr(attack) for attack in self.attacks)}])"

    # inputs are taken, copied and merged as the members take them (tensors, or lists of objects)
    def _prepare_inputs(self, x: Any, n: int, device: torch.device) -> Any:
        return self.attacks[0]._prepare_inputs(x, n, device)

    def _take(self, x: Any, idx: torch.Tensor) -> Any:
        return self.attacks[0]._take(x, idx)

    def _copy(self, x: Any) -> Any:
        return self.attacks[0]._copy(x)

    def _merge(self, x: Any, idx: torch.Tensor, x_sub: Any) -> Any:
        return self.attacks[0]._merge(x, idx, x_sub)

    def _confirm(self, problem: Problem, best: Best) -> None:
        """Nothing to do: each member confirmed its own successes with a fresh pass on the very points returned."""

    def _run(self, problem: Problem) -> Best:
        best = Best(problem.x, problem.y.device)
        report = []
        for i, attack in enumerate(self.attacks):
            todo = (~best.success).nonzero().squeeze(1)
            if len(todo) == 0:
                report.append({"name": attack.name, "attacked": 0, "successes": 0, "forward_passes": 0,
                               "backward_passes": 0, "info": {}})
                continue
            sub = Problem(problem.model, self._take(problem.x, todo), problem.y[todo],
                          None if problem.target is None else problem.target[todo], problem.ids[todo],
                          attack.loss_fn, attack.eot, None if problem.reference is None else problem.reference[todo],
                          rows=problem.rows)
            found = attack._solve(sub)
            attack._confirm(sub, found)
            problem.forward_passes += sub.forward_passes
            problem.backward_passes += sub.backward_passes
            # the first attack's points stand for the examples no attack breaks; later ones only where they break
            take = torch.ones_like(found.success) if i == 0 else found.success
            best.x = self._merge(best.x, todo[take], self._take(found.x, take.nonzero().squeeze(1)))
            best.loss[todo[take]] = found.loss[take].to(best.loss.dtype)
            best.success[todo] |= found.success
            report.append({"name": attack.name, "attacked": len(todo), "successes": int(found.success.sum()),
                           "forward_passes": sub.forward_passes, "backward_passes": sub.backward_passes,
                           "info": sub.info})
        problem.info["attacks"] = report
        return best
