"""Auto-PGD (Croce and Hein 2020): PGD with momentum and a step size that adapts per example.

The step size starts at twice the budget and is halved at checkpoints where the loss stopped
rising; a halving example restarts from the best point it has seen. Works over any continuous space.

Example:
    >>> import torch, robustkit as rk
    >>> from robustkit.attacks.apgd import apgd_checkpoints
    >>> apgd_checkpoints(100)
    [22, 41, 57, 70, 80, 87, 93, 99]
    >>> model = torch.nn.Linear(4, 3)
    >>> x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
    >>> space = rk.LinfBall(eps=0.1, bounds=(0.0, 1.0))
    >>> result = rk.APGD(space, steps=10)(model, x, y)
    >>> bool(space.contains(result.x_adv, x).all())
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

__all__ = ["APGD", "apgd_checkpoints", "apgd_should_halve"]

#: Weight of the new gradient step against the previous move (alpha of the paper).
_MOMENTUM = 0.75


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations after which APGD may halve its step size, for a run of ``steps`` iterations.

    Periods have integer lengths: the first is ``max(int(0.22 * steps), 1)``; each next one is
    ``max(int(0.03 * steps), 1)`` shorter, but never shorter than ``max(int(0.06 * steps), 1)``.

    Example:
        >>> apgd_checkpoints(10)
        [2, 3, 4, 5, 6, 7, 8, 9, 10]
    """
    if int(steps) < 1:
        raise ConfigError(f"steps must be >= 1, got {steps!r}")
    steps = int(steps)
    period = max(int(0.22 * steps), 1)
    shrink = max(int(0.03 * steps), 1)
    shortest = max(int(0.06 * steps), 1)
    points: list[int] = []
    at = period
    while at <= steps:
        points.append(at)
        period = max(period - shrink, shortest)
        at += period
    return points


def apgd_should_halve(
    increases: torch.Tensor,
    period: int,
    rho: float,
    halved_last: torch.Tensor,
    best_loss: torch.Tensor,
    best_loss_last: torch.Tensor,
) -> torch.Tensor:
    """Which examples halve their step size at a checkpoint (one bool per example).

    Condition 1: the loss rose (``f(x_{i+1}) > f(x_i)``) in fewer than ``rho * period`` of the
    period's steps. Condition 2: the step size was not halved at the previous checkpoint and the
    best loss has not improved since then.

    Args:
        increases: per example, the number of the period's steps where the loss rose.
        period: the number of steps since the previous checkpoint (or since the start).
        rho: the share of rising steps below which the step size is halved.
        halved_last: per example, was the step size halved at the previous checkpoint?
        best_loss: per example, the best loss now.
        best_loss_last: per example, the best loss at the previous checkpoint (or at the start).

    Example:
        >>> import torch
        >>> apgd_should_halve(torch.tensor([3, 9]), 10, 0.75, torch.tensor([True, True]),
        ...                   torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]))
        tensor([ True, False])
    """
    oscillating = increases < rho * period
    stalled = ~halved_last & (best_loss <= best_loss_last)
    return oscillating | stalled


class _RunState:
    """Per-example state of one APGD run; every tensor's first dimension is the active examples."""

    idx: torch.Tensor  # positions into the problem
    pos: torch.Tensor  # positions into this run's examples (trace columns)
    x0: torch.Tensor  # clean inputs
    x: torch.Tensor  # current iterate
    x_prev: torch.Tensor  # previous iterate (momentum)
    grad: torch.Tensor  # loss gradient at x
    loss: torch.Tensor  # loss at x
    success: torch.Tensor  # does x succeed?
    eta: torch.Tensor  # step size
    x_max: torch.Tensor  # best point of this run (highest loss)
    g_max: torch.Tensor  # gradient at x_max
    f_max: torch.Tensor  # loss at x_max
    f_max_last: torch.Tensor  # f_max at the previous checkpoint
    increases: torch.Tensor  # steps since the previous checkpoint where the loss rose
    halved: torch.Tensor  # was eta halved at the previous checkpoint?
    fresh: torch.Tensor  # next step without momentum (first step, or just restarted from x_max)

    def __init__(self, **tensors: torch.Tensor) -> None:
        for key, value in tensors.items():
            setattr(self, key, value)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the examples at ``rows``."""
        for key, value in list(vars(self).items()):
            setattr(self, key, value[rows])


class APGD(Attack):
    """Auto-PGD: momentum PGD whose per-example step size halves when progress stalls.

    Each run starts at a random point of the space with step size ``2 * space.budget``. A step goes
    to ``P(x + a (z - x) + (1 - a)(x - x_prev))`` with ``z = P(step(x, grad, eta))`` and ``a = 0.75``
    (``a = 1``: no momentum, on the first step and right after a restart). At each checkpoint (see
    :func:`apgd_checkpoints`) an example whose progress stalled (:func:`apgd_should_halve`) halves
    its step size and restarts from the highest-loss point of its run.

    Args:
        space: a continuous space (``LinfBall``, ``L2Ball`` or a domain's own).
        steps: iterations per restart (one gradient each).
        loss: "ce", "dlr" (3+ classes; 4+ when targeted) or "margin", or a callable.
        restarts: runs from fresh random starts, each only on the examples still robust.
        rho: share of loss-increasing steps in a period below which the step size is halved.
        record: keep a trace of per-iteration losses and step sizes in the result's ``info["trace"]``.
        targeted, seed, early_stop, eot: see :class:`~robustkit.attacks.base.Attack`;
            ``loss="dlr", targeted=9`` is AutoAttack's APGD-T (the targeted DLR loss towards each
            example's 9 most likely other classes in turn).

    The trace is a list with one dict per restart, holding ``ids`` (the examples of that run) and
    tensors of shape ``(steps + 1, len(ids))``: ``loss`` (the loss of iterate t as computed),
    ``eta`` (the step size after iteration t's checkpoint decision) and ``best_loss``; entries of
    examples no longer attacked (early stop) are NaN.

    Example:
        >>> import torch, robustkit as rk
        >>> model = torch.nn.Linear(4, 3)
        >>> x, y = torch.rand(6, 4), torch.randint(0, 3, (6,))
        >>> attack = rk.APGD(rk.L2Ball(eps=0.5), steps=20, loss="dlr", record=True, early_stop=False)
        >>> result = attack(model, x, y)
        >>> result.info["trace"][0]["eta"].shape
        torch.Size([21, 6])
        >>> float(result.info["trace"][0]["eta"][0, 0])
        1.0
    """

    name = "apgd"

    def __init__(
        self,
        space: PerturbationSpace,
        *,
        steps: int = 100,
        loss: str | LossFn = "ce",
        restarts: int = 1,
        targeted: bool | int = False,
        seed: int = 0,
        early_stop: bool = True,
        eot: int = 1,
        rho: float = 0.75,
        record: bool = False,
    ) -> None:
        super().__init__(space, loss=loss, targeted=targeted, seed=seed, early_stop=early_stop, eot=eot)
        if not isinstance(space, ContinuousSpace):
            raise ConfigError(
                f"{type(self).__name__} needs a continuous space (e.g. rk.LinfBall), got {type(space).__name__}"
            )
        steps, restarts = integer_at_least("steps", steps), integer_at_least("restarts", restarts)
        if not 0.0 < float(rho) <= 1.0:
            raise ConfigError(f"rho must lie in (0, 1], got {rho!r}: the default 0.75 is the paper's")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.rho = float(rho)
        self.record = bool(record)
        self.checkpoints = apgd_checkpoints(self.steps)

    @property
    def cspace(self) -> ContinuousSpace:
        assert isinstance(self.space, ContinuousSpace)
        return self.space

    def config(self) -> dict[str, Any]:
        return {"steps": self.steps, "restarts": self.restarts, "rho": self.rho, **super().config()}

    def _run(self, problem: Problem) -> Best:
        best = Best(problem.x, problem.x.device)
        if self.record:
            problem.info.update(trace=[], checkpoints=list(self.checkpoints))
        for restart in range(self.restarts):
            todo = (~best.success).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            self._climb(problem, best, todo, restart)
        return best

    def _climb(self, problem: Problem, best: Best, todo: torch.Tensor, restart: int) -> None:
        """One run from a random start on the examples ``todo``, recording into ``best``."""
        space = self.cspace
        x0 = problem.x[todo]
        x_start = space.init(x0, seed=_random.derive(self.seed, restart), ids=problem.ids[todo])
        logits, loss, grad = problem.loss_grad(x_start, todo)
        success = problem.success(logits, todo)
        best.update(todo, x_start, loss, success)
        n = len(todo)
        s = _RunState(
            idx=todo, pos=torch.arange(n, device=todo.device), x0=x0, x=x_start, x_prev=x_start, grad=grad,
            loss=loss, success=success,
            eta=torch.full((n,), 2.0 * space.budget, device=x0.device, dtype=x0.dtype),
            x_max=x_start, g_max=grad, f_max=loss, f_max_last=loss,
            increases=torch.zeros(n, dtype=torch.long, device=x0.device),
            halved=torch.zeros(n, dtype=torch.bool, device=x0.device),
            fresh=torch.ones(n, dtype=torch.bool, device=x0.device),
        )
        trace = self._new_trace(problem, todo) if self.record else None
        if trace is not None:
            self._write(trace, 0, s)
        checkpoints = set(self.checkpoints)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        last_checkpoint = 0
        for t in range(1, self.steps + 1):
            if self.early_stop:
                keep = (~s.success).nonzero().squeeze(1)
                if len(keep) == 0:
                    break
                if len(keep) < len(s.idx):
                    s.keep(keep)
            z = space.project(space.step(s.x, s.grad, s.eta), s.x0)
            a = torch.where(s.fresh, 1.0, _MOMENTUM).to(s.x.dtype).view(shape)
            x_new = space.project(s.x + a * (z - s.x) + (1.0 - a) * (s.x - s.x_prev), s.x0)
            if t < self.steps:
                logits, loss, grad = problem.loss_grad(x_new, s.idx)
            else:  # no step follows: the gradient is not needed
                logits, loss = problem.evaluate(x_new, s.idx)
                grad = s.grad
            s.success = problem.success(logits, s.idx)
            best.update(s.idx, x_new, loss, s.success)
            s.increases = s.increases + (loss > s.loss).long()
            s.x_prev, s.x, s.grad, s.loss = s.x, x_new, grad, loss
            up = loss > s.f_max
            s.x_max = torch.where(up.view(shape), x_new, s.x_max)
            s.g_max = torch.where(up.view(shape), grad, s.g_max)
            s.f_max = torch.where(up, loss, s.f_max)
            s.fresh = torch.zeros_like(s.fresh)
            if trace is not None:
                trace["loss"][t, s.pos] = loss.to(trace["loss"].dtype)
            if t in checkpoints:
                self._checkpoint(s, t - last_checkpoint, shape)
                last_checkpoint = t
            if trace is not None:
                self._write(trace, t, s)
        if trace is not None:
            problem.info["trace"].append(trace)

    def _checkpoint(self, s: _RunState, period: int, shape: tuple[int, ...]) -> None:
        """Halve the step size where progress stalled, restarting those examples from their best point."""
        halve = apgd_should_halve(s.increases, period, self.rho, s.halved, s.f_max, s.f_max_last)
        h = halve.view(shape)
        s.eta = torch.where(halve, s.eta / 2.0, s.eta)
        s.x = torch.where(h, s.x_max, s.x)
        s.grad = torch.where(h, s.g_max, s.grad)
        s.loss = torch.where(halve, s.f_max, s.loss)
        s.fresh = halve  # the next step has no momentum term
        s.halved = halve
        s.f_max_last = s.f_max
        s.increases = torch.zeros_like(s.increases)

    def _new_trace(self, problem: Problem, todo: torch.Tensor) -> dict[str, torch.Tensor]:
        x = problem.x

        def blank() -> torch.Tensor:
            return torch.full((self.steps + 1, len(todo)), float("nan"), device=x.device, dtype=x.dtype)

        return {"ids": problem.ids[todo].clone(), "loss": blank(), "eta": blank(), "best_loss": blank()}

    @staticmethod
    def _write(trace: dict[str, torch.Tensor], t: int, s: _RunState) -> None:
        if t == 0:
            trace["loss"][0, s.pos] = s.loss.to(trace["loss"].dtype)
        trace["eta"][t, s.pos] = s.eta.to(trace["eta"].dtype)
        trace["best_loss"][t, s.pos] = s.f_max.to(trace["best_loss"].dtype)
