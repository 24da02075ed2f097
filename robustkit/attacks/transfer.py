"""Transfer attack: craft adversarial examples on a surrogate model, judge them on the target.

For models without usable gradients (gradient-boosted trees, a quantised or masked network) an
attack on a differentiable surrogate, trained on the same task or distilled from the target, gives
candidates the target is then queried on once. Robustness measured this way is an **upper bound**:
a stronger attack may still find examples the transfer misses. Pair it with a gradient-free attack
on the target itself (:class:`~robustkit.attacks.random_search.RandomSearch`).

Example:
    >>> import torch, robustkit as rk
    >>> target = torch.nn.Linear(4, 2)
    >>> surrogate = torch.nn.Linear(4, 2)
    >>> x, y = torch.rand(6, 4), torch.randint(0, 2, (6,))
    >>> space = rk.LinfBall(eps=0.1, bounds=(0.0, 1.0))
    >>> result = rk.Transfer(rk.PGD(space, steps=5), surrogate)(target, x, y)
    >>> bool(space.contains(result.x_adv, x).all()), result.backward_passes
    (True, 0)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustkit.attacks.base import Attack, Best, Problem
from robustkit.errors import ConfigError
from robustkit.spaces import PerturbationSpace

__all__ = ["Transfer"]


class Transfer(Attack):
    """Run ``attack`` on ``surrogate`` and keep its points where they hurt the target most.

    The target is only queried forward: once on the surrogate's adversarial points (plus the
    success re-check). Surrogate passes are reported in ``AttackResult.info`` and not counted as
    target passes.

    Args:
        attack: any attack over the same space (its loss, seed and settings are used on the surrogate).
        surrogate: a differentiable ``nn.Module`` with the target's inputs and classes.
    """

    name = "transfer"

    def __init__(self, attack: Attack, surrogate: nn.Module) -> None:
        if not isinstance(attack, Attack):
            raise ConfigError(f"Transfer needs a robustkit attack to run on the surrogate, got {attack!r}")
        if not isinstance(surrogate, nn.Module):
            kind = type(surrogate).__name__
            raise ConfigError(f"the surrogate must be a torch.nn.Module returning logits, got {kind}")
        # a top-k targeted attack is untargeted from outside: its points are scored with the margin
        super().__init__(attack.space, loss="margin" if attack.top_k else attack.loss_fn, targeted=attack.targeted,
                         seed=attack.seed, early_stop=attack.early_stop)
        self.loss_name = attack.loss_name
        self.attack = attack
        self.surrogate = surrogate

    def config(self) -> dict[str, Any]:
        return {"surrogate": type(self.surrogate).__name__, "attack": type(self.attack).__name__,
                **self.attack.config()}

    def with_space(self, space: PerturbationSpace) -> Attack:
        clone = super().with_space(space)
        assert isinstance(clone, Transfer)
        clone.attack = self.attack.with_space(space)
        return clone

    def _run(self, problem: Problem) -> Best:
        crafted = self.attack(self.surrogate, problem.x, problem.y, target=problem.target, ids=problem.ids,
                              reference=problem.reference)
        idx = torch.arange(len(problem), device=problem.y.device)
        logits, loss = problem.evaluate(crafted.x_adv, idx)
        best = Best(problem.x, problem.y.device)
        best.update(idx, crafted.x_adv, loss, problem.success(logits, idx))
        problem.info["surrogate_forward_passes"] = crafted.forward_passes
        problem.info["surrogate_backward_passes"] = crafted.backward_passes
        problem.info["surrogate_success_rate"] = float(crafted.success.float().mean()) if len(idx) else 0.0
        return best
