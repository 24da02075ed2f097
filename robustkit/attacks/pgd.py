"""Projected gradient descent (Madry et al. 2018) and FGSM, over any continuous space.

The gradient loop is written once here: a space says how to start, step and project.

Example:
    >>> import torch, robustkit as rk
    >>> model = torch.nn.Linear(4, 3)
    >>> x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
    >>> result = rk.PGD(rk.LinfBall(eps=0.1, bounds=(0.0, 1.0)), steps=5)(model, x, y)
    >>> bool(rk.LinfBall(eps=0.1, bounds=(0.0, 1.0)).contains(result.x_adv, x).all())
    True
"""

from __future__ import annotations

from typing import Any

import torch

from robustkit import _random
from robustkit.attacks.base import Attack, Best, Problem, integer_at_least
from robustkit.errors import ConfigError
from robustkit.losses import LossFn
from robustkit.spaces import ContinuousSpace, PerturbationSpace

__all__ = ["FGSM", "PGD"]


def _compact_share(device: torch.device) -> float:
    """Share of the active batch that must have finished before early stopping gathers it anew.

    On a CPU the work is the arithmetic, so finished examples leave at once. On a GPU a small
    model's step is launch-bound: gathering the batch costs more than stepping a few finished
    examples, which are frozen in place instead (their best point stays their first success, so
    the results are the same; the pass counts include the frozen examples' passes).
    """
    return 0.0 if device.type == "cpu" else 0.125


class PGD(Attack):
    """Projected gradient ascent on the loss from a random start, with restarts.

    Args:
        space: a continuous space (``LinfBall``, ``L2Ball`` or a domain's own).
        steps: gradient steps per restart.
        step_size: step length; default ``space.default_step_size(steps)`` (2.5 eps / steps).
        restarts: random restarts, each run only on the examples still robust; the worst case is kept.
        random_start: start from a random point of the space (else from the clean input).
        init_scale: the random start is drawn from the ball of ``init_scale * budget`` (TRADES: tiny).
        loss, targeted, seed, early_stop, eot: see :class:`~robustkit.attacks.base.Attack`.
    """

    name = "pgd"

    def __init__(
        self,
        space: PerturbationSpace,
        *,
        steps: int = 10,
        step_size: float | None = None,
        restarts: int = 1,
        random_start: bool = True,
        init_scale: float = 1.0,
        loss: str | LossFn = "ce",
        targeted: bool | int = False,
        seed: int = 0,
        early_stop: bool = True,
        eot: int = 1,
    ) -> None:
        super().__init__(space, loss=loss, targeted=targeted, seed=seed, early_stop=early_stop, eot=eot)
        if not 0.0 < float(init_scale) <= 1.0:
            raise ConfigError(f"init_scale must lie in (0, 1], got {init_scale!r}")
        self.init_scale = float(init_scale)
        if not isinstance(space, ContinuousSpace):
            raise ConfigError(f"{type(self).__name__} needs a continuous space, got {type(space).__name__}")
        steps, restarts = integer_at_least("steps", steps), integer_at_least("restarts", restarts)
        if restarts > 1 and not random_start:
            raise ConfigError("restarts > 1 need random_start=True: without it every restart repeats the same run")
        if step_size is not None and not float(step_size) > 0:
            raise ConfigError(f"step_size must be > 0, got {step_size!r}")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.step_size = None if step_size is None else float(step_size)
        self.random_start = random_start

    @property
    def cspace(self) -> ContinuousSpace:
        assert isinstance(self.space, ContinuousSpace)
        return self.space

    def config(self) -> dict[str, Any]:
        return {"steps": self.steps, "restarts": self.restarts, "step_size": self._alpha(), **super().config()}

    def _alpha(self) -> float:
        return self.cspace.default_step_size(self.steps) if self.step_size is None else self.step_size

    def _run(self, problem: Problem) -> Best:
        """The first restart on every example, then restarts 2..k as one batch on the examples it left
        robust (each restart's own random stream): a k-th of the steps for the examples that resist. The
        restarts are folded in order, each only where the ones before failed, as if run one by one."""
        x = problem.x
        best = Best(x, x.device)
        every = torch.arange(len(x), device=x.device)
        self._fold(best, every, self._climb(problem, every, [0]), [0])
        todo = (~best.success).nonzero().squeeze(1)
        later = list(range(1, self.restarts))
        if later and len(todo):
            self._fold(best, todo, self._climb(problem, todo, later), later)
        return best

    def _fold(self, best: Best, rows: torch.Tensor, found: Best, restarts: list[int]) -> None:
        n = len(rows)
        for k in range(len(restarts)):
            failing = ~best.success[rows]
            part = slice(k * n, (k + 1) * n)
            idx = rows[failing]
            best.update(idx, found.x[part][failing], found.loss[part][failing], found.success[part][failing])

    def _climb(self, problem: Problem, rows: torch.Tensor, restarts: list[int]) -> Best:
        """PGD from each restart's random start on ``rows`` (restart-major): the best point of each run."""
        space, x = self.cspace, problem.x
        alpha = self._alpha()
        share = _compact_share(x.device)
        x0 = x[rows].repeat(len(restarts), *[1] * (x.dim() - 1))
        if self.random_start:
            start_space = space if self.init_scale == 1.0 else space.with_budget(space.budget * self.init_scale)
            x_adv = torch.cat([start_space.init(x[rows], seed=_random.derive(self.seed, r), ids=problem.ids[rows])
                               for r in restarts])
        else:
            x_adv = x0.clone()
        found = Best(x0, x.device)
        owner = rows.repeat(len(restarts))  # the problem's example behind each run
        active = torch.arange(len(x0), device=x.device)
        whole, project = True, space.projector(x0)
        done: torch.Tensor | None = None
        for t in range(self.steps + 1):
            if t < self.steps:
                logits, loss, grad = problem.loss_grad(x_adv, owner[active])
            else:
                logits, loss = problem.evaluate(x_adv, owner[active])
            success = problem.success(logits, owner[active])
            found.update(None if whole else active, x_adv, loss, success)
            if t == self.steps:
                break
            if self.early_stop:
                done = success if done is None else done | success
                keep = (~done).nonzero().squeeze(1)
                if len(keep) == 0:
                    break
                finished = len(active) - len(keep)
                if finished == 0:
                    done = None
                elif finished >= share * len(active):
                    active, x_adv, grad, x0 = active[keep], x_adv[keep], grad[keep], x0[keep]
                    whole, done, project = False, None, space.projector(x0)
            stepped = project(space.step(x_adv, grad, alpha))
            x_adv = stepped if done is None else torch.where(done.view(-1, *[1] * (x.dim() - 1)), x_adv, stepped)
        return found


class FGSM(PGD):
    """The fast gradient sign method: one step of size eps from the clean input (or a random start).

    Example:
        >>> import torch, robustkit as rk
        >>> w = torch.nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = w.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
        >>> rk.FGSM(rk.LinfBall(eps=0.5))(w, torch.zeros(1, 2), torch.tensor([0])).x_adv
        tensor([[-0.5000,  0.5000]])
    """

    name = "fgsm"

    def __init__(
        self,
        space: PerturbationSpace,
        *,
        step_size: float | None = None,
        random_start: bool = False,
        loss: str | LossFn = "ce",
        targeted: bool | int = False,
        seed: int = 0,
        eot: int = 1,
    ) -> None:
        super().__init__(
            space, steps=1, step_size=step_size, restarts=1, random_start=random_start, loss=loss,
            targeted=targeted, seed=seed, early_stop=True, eot=eot,
        )

    def config(self) -> dict[str, Any]:
        return {"step_size": self._alpha(), "random_start": self.random_start, **Attack.config(self)}
