"""FAB (Croce and Hein 2020): the Fast Adaptive Boundary attack, targeted, minimal-norm, Linf and L2.

Each step linearises the gap between the target's logit and the true one, projects both the current
point and the clean input onto that linearised decision boundary (inside the box), moves to a
convex mix of the two projections slightly past the boundary, and steps back towards the clean
input once it is adversarial. It keeps the adversarial point of smallest norm, so one run gives
each example's minimal perturbation found; ``success`` says whether it lies within the budget.

Example:
    >>> import torch, robustkit as rk
    >>> from robustkit.attacks.fab import project_onto_hyperplane
    >>> p, w = torch.zeros(1, 2), torch.tensor([[1.0, 1.0]])
    >>> project_onto_hyperplane(p, w, torch.tensor([1.0]), torch.full((1, 2), -1.0), torch.ones(1, 2), "l2")
    tensor([[0.5000, 0.5000]])
    >>> model = torch.nn.Linear(4, 5)
    >>> x, y = torch.rand(6, 4), torch.randint(0, 5, (6,))
    >>> space = rk.LinfBall(eps=0.1, bounds=(0.0, 1.0))
    >>> result = rk.FAB(space, steps=10, targeted=4)(model, x, y)
    >>> bool(space.contains(result.x_adv, x).all()), result.info["norms"].shape
    (True, torch.Size([6]))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustkit import _random
from robustkit.attacks.base import Attack, AttackResult, Best, Problem
from robustkit.errors import ConfigError
from robustkit.spaces import ContinuousSpace, L2Ball, LinfBall, PerturbationSpace

__all__ = ["FAB", "logit_gap", "project_onto_hyperplane"]


def logit_gap(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """The target's logit minus the true class's (the decision boundary FAB linearises is where it is 0)."""
    assert target is not None
    return (logits.gather(1, target[:, None]) - logits.gather(1, y[:, None])).squeeze(1)


def project_onto_hyperplane(
    p: torch.Tensor, w: torch.Tensor, c: torch.Tensor, low: torch.Tensor, high: torch.Tensor, norm: str
) -> torch.Tensor:
    """The point of ``{z : w.z = c, low <= z <= high}`` nearest to ``p`` in the ``norm`` ("linf", "l2"), per row.

    Exact: the perturbation is ``clamp(lam * v, low - p, high - p)`` with ``v = w`` (L2) or ``sign(w)``
    (Linf), and ``w . delta`` is piecewise linear in ``lam``, with a kink where each coordinate hits the
    box; the kinks are sorted and ``lam`` solved on the right piece. Where the plane misses the box, the
    box point nearest to it (every coordinate at its bound) is returned. Rows are (N, D) tensors.
    """
    r = c - (w * p).sum(dim=1)
    flip = torch.where(r < 0, -1.0, 1.0).to(w.dtype)[:, None]
    wf, rf = w * flip, r.abs()
    room = torch.where(wf > 0, high - p, torch.where(wf < 0, p - low, torch.zeros_like(p))).clamp_min(0.0)
    if norm == "l2":  # delta_i = wf_i * min(lam, room_i / |wf_i|): slope wf_i^2 until its kink
        slope = wf * wf
        kink = torch.where(wf != 0, room / wf.abs().clamp_min(1e-30), torch.full_like(p, float("inf")))
    else:  # delta_i = sign(wf_i) * min(lam, room_i): slope |wf_i| until its kink
        slope = wf.abs()
        kink = torch.where(wf != 0, room, torch.full_like(p, float("inf")))
    kink, order = kink.sort(dim=1)
    slope = slope.gather(1, order)
    # w.delta of a clipped coordinate (coordinates without a bound never clip)
    reached = torch.where((slope > 0) & torch.isfinite(kink), slope * kink, torch.zeros_like(kink))
    before = torch.cumsum(reached, dim=1) - reached  # clipped coordinates' share below each kink
    free = slope.flip(1).cumsum(dim=1).flip(1)  # slope of the coordinates not yet clipped
    at_kink = before + torch.where(free > 0, kink * free, torch.zeros_like(kink))
    piece = (at_kink < rf[:, None]).sum(dim=1, keepdim=True).clamp_max(p.shape[1] - 1)
    lam = (rf[:, None] - before.gather(1, piece)) / free.gather(1, piece).clamp_min(1e-30)
    hits = (at_kink >= rf[:, None]).any(dim=1, keepdim=True)
    lam = torch.where(hits, lam, torch.full_like(lam, float("inf")))  # the plane is out of reach
    direction = wf if norm == "l2" else wf.sign()
    step = torch.where(direction != 0, lam * direction, torch.zeros_like(p))
    return p + torch.maximum(torch.minimum(step, high - p), low - p)


class FAB(Attack):
    """FAB-T: the targeted Fast Adaptive Boundary attack, a minimal-norm attack over Linf or L2.

    A step from ``x`` (the clean input ``x0``, or a random start on restarts) projects ``x`` and ``x0``
    onto the boundary of the target's logit gap linearised at ``x`` (:func:`project_onto_hyperplane`),
    giving moves ``d1`` and ``d2``, and goes to ``(x + eta d1)(1 - a) + (x0 + eta d2) a`` with
    ``a = min(|d1| / (|d1| + |d2|), alpha_max)``, clipped to the bounds. An adversarial point is kept if
    its norm is the smallest so far, and the iterate steps back to ``x0 + beta (x - x0)``. A step
    costs one forward-backward pass and one forward pass, as in the reference.

    Args:
        space: an ``LinfBall`` or ``L2Ball``; success means an adversarial point within its budget.
        steps: iterations per restart (AutoAttack: 100).
        targeted: True (pass ``target=``) or the number of most likely other classes to try in turn
            (AutoAttack's FAB-T: 9); untargeted FAB, which needs every class's gradient, is not offered.
        restarts: runs per target; the first starts at the clean input, the others at a random point
            at half the smaller of the budget and the best norm found.
        alpha_max, eta, beta: the paper's bias towards ``x0``, overshoot and backward step.
        search_steps: after the run, bisect along the segment from ``x0`` to the best point this many
            times (one forward pass each) for a smaller adversarial scale; 0 (AutoAttack) skips it.
        seed, early_stop: see :class:`~robustkit.attacks.base.Attack`; with ``early_stop`` an example
            stops once it has an adversarial point within the budget (its success is then final).

    The result's ``info["norms"]`` holds per example the norm of the adversarial point returned (inf
    where none was found within the budget).
    """

    name = "fab"

    def __init__(
        self,
        space: PerturbationSpace,
        *,
        steps: int = 100,
        targeted: bool | int = 9,
        restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        search_steps: int = 0,
        seed: int = 0,
        early_stop: bool = True,
    ) -> None:
        if targeted is False:
            raise ConfigError("FAB here is targeted only: pass targeted=True with target=, or targeted=9 "
                              "to try each example's 9 most likely other classes (AutoAttack's FAB-T)")
        super().__init__(space, loss=logit_gap, targeted=targeted, seed=seed, early_stop=early_stop)
        self.loss_name = "logit-gap"
        if not isinstance(space, LinfBall | L2Ball):
            raise ConfigError(f"FAB works over rk.LinfBall or rk.L2Ball, got {type(space).__name__}")
        if int(steps) < 1 or int(restarts) < 1 or int(search_steps) < 0:
            raise ConfigError(f"steps and restarts must be >= 1 and search_steps >= 0, got {steps!r}, "
                              f"{restarts!r}, {search_steps!r}")
        if not (0.0 <= alpha_max <= 1.0 and eta >= 1.0 and 0.0 < beta < 1.0):
            raise ConfigError(f"need 0 <= alpha_max <= 1, eta >= 1 and 0 < beta < 1, got {alpha_max}, {eta}, {beta}: "
                              "the paper's values are 0.1, 1.05 and 0.9")
        self.steps, self.restarts, self.search_steps = int(steps), int(restarts), int(search_steps)
        self.alpha_max, self.eta, self.beta = float(alpha_max), float(eta), float(beta)

    @property
    def cspace(self) -> ContinuousSpace:
        assert isinstance(self.space, ContinuousSpace)
        return self.space

    def config(self) -> dict[str, Any]:
        return {"steps": self.steps, "restarts": self.restarts, "alpha_max": self.alpha_max, "eta": self.eta,
                "beta": self.beta, "search_steps": self.search_steps, **super().config()}

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | Sequence[int], **kwargs: Any
    ) -> AttackResult:
        """:meth:`Attack.__call__`, adding ``info["norms"]``: per example the norm of its adversarial
        point, inf where none was found within the budget (a budget covering the box gives every
        example's minimal norm found)."""
        result = super().__call__(model, x, y, **kwargs)
        norms = self.cspace.norm(result.x_adv - x.to(result.x_adv.device))
        result.info["norms"] = torch.where(result.success, norms, float("inf"))
        return result

    def _run(self, problem: Problem) -> Best:
        space, x0 = self.cspace, problem.x
        n = len(x0)
        everyone = torch.arange(n, device=x0.device)
        norm_best = torch.full((n,), float("inf"), device=x0.device, dtype=x0.dtype)
        x_best = x0.clone()
        for restart in range(self.restarts):
            todo = everyone if not self.early_stop else (norm_best > space.eps + space.atol).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            self._descend(problem, todo, restart, x_best, norm_best)
        if self.search_steps:
            self._search(problem, x_best, norm_best)
        final = torch.where((norm_best <= space.eps + space.atol).view(-1, *[1] * (x0.dim() - 1)), x_best, x0)
        logits, loss = problem.evaluate(final, everyone)
        best = Best(x0, x0.device)
        best.update(everyone, final, loss, problem.success(logits, everyone))
        return best

    def _descend(self, problem: Problem, todo: torch.Tensor, restart: int, x_best: torch.Tensor,
                 norm_best: torch.Tensor) -> None:
        space = self.cspace
        x0 = problem.x[todo]
        shape = (-1,) + (1,) * (x0.dim() - 1)
        low, high = (torch.broadcast_to(b, x0.shape).flatten(1) for b in space._bounds_like(x0))
        x = x0
        if restart:  # a random start at half the smaller of the budget and the best norm so far
            noise = space._sphere_sample(tuple(x0.shape[1:]), _random.derive(self.seed, restart), problem.ids[todo],
                                         x0.dtype) / space.eps
            radius = torch.clamp(norm_best[todo], max=space.eps).view(shape) * 0.5
            x = torch.clamp(x0 + noise * radius, low.view_as(x0), high.view_as(x0))
        flat0 = x0.flatten(1)
        kind = "linf" if isinstance(space, LinfBall) else "l2"
        for _ in range(self.steps):
            if self.early_stop:
                keep = (norm_best[todo] > space.eps + space.atol).nonzero().squeeze(1)
                if len(keep) == 0:
                    return
                if len(keep) < len(todo):
                    todo, x, x0, flat0, low, high = (t[keep] for t in (todo, x, x0, flat0, low, high))
            _, gap, grad = problem.loss_grad(x, todo)
            w = space._apply_mask(grad).flatten(1)
            flat = x.flatten(1)
            c = (w * flat).sum(dim=1) - gap
            # the current point and the clean input onto the same plane, in one call
            points = torch.cat([flat, flat0])
            moves = project_onto_hyperplane(points, w.repeat(2, 1), c.repeat(2), low.repeat(2, 1), high.repeat(2, 1),
                                            kind) - points
            d1, d2 = moves[: len(flat)], moves[len(flat) :]
            a1 = space.norm(d1).clamp_min(1e-8)
            a2 = space.norm(d2).clamp_min(1e-8)
            alpha = (a1 / (a1 + a2)).clamp(0.0, self.alpha_max)[:, None]
            moved = (flat + self.eta * d1) * (1 - alpha) + (flat0 + self.eta * d2) * alpha
            x = torch.clamp(moved, low, high).view_as(x0)
            logits, _ = problem.evaluate(x, todo)
            adv = problem.success(logits, todo)
            dist = space.norm(x - x0)
            better = adv & (dist < norm_best[todo])
            x_best[todo] = torch.where(better.view(shape), x, x_best[todo])
            norm_best[todo] = torch.where(better, dist, norm_best[todo])
            x = torch.where(adv.view(shape), x0 + self.beta * (x - x0), x)

    def _search(self, problem: Problem, x_best: torch.Tensor, norm_best: torch.Tensor) -> None:
        """Bisect the scale of each best perturbation for the smallest one that stays adversarial."""
        found = torch.isfinite(norm_best).nonzero().squeeze(1)
        if len(found) == 0:
            return
        x0 = problem.x[found]
        delta = x_best[found] - x0
        hi = problem.smallest_scale(x0, delta, found, self.search_steps)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        x_best[found] = x0 + hi.view(shape) * delta
        norm_best[found] = self.cspace.norm(x_best[found] - x0)
