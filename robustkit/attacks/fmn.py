"""FMN (Pintor et al. 2021): Fast Minimum-Norm attack over Linf and L2, with its adaptive norm budget.

Each example carries its own budget ``e``: while no adversarial point is found, ``e`` jumps to the
current norm plus the linearised distance to the boundary, times ``1 + gamma`` (the paper jumps to the
distance itself, which can land on an exact tie and stay there); once one is found, ``e`` grows by
``1 + gamma`` on a step that is not adversarial; on an
adversarial step it shrinks by ``1 - gamma`` (never above the best norm found). Each step climbs the
margin loss along the L2-normalised gradient and projects onto the ``e`` ball and the box. ``gamma``
and the step size are cosine-annealed. One run gives each example's smallest adversarial norm found,
hence robust accuracy at every budget at once (:func:`robustkit.evaluation.curves.robustness_curve`).

Example:
    >>> import torch, robustkit as rk
    >>> model = torch.nn.Linear(4, 3)
    >>> x, y = torch.rand(6, 4), torch.randint(0, 3, (6,))
    >>> result = rk.FMN(rk.L2Ball(eps=10.0), steps=20, early_stop=False)(model, x, y)
    >>> result.info["norms"].shape
    torch.Size([6])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustkit.attacks.base import Attack, AttackResult, Best, Problem
from robustkit.errors import ConfigError
from robustkit.spaces import ContinuousSpace, L2Ball, LinfBall, PerturbationSpace

__all__ = ["FMN"]


class FMN(Attack):
    """Fast Minimum-Norm attack: margin ascent inside a per-example budget that adapts to the boundary.

    Args:
        space: an ``LinfBall`` or ``L2Ball``; success means an adversarial point within its budget (a
            budget covering the box, e.g. ``space.covering_budget(x)``, makes every example count).
        steps: iterations (one forward-backward pass each).
        alpha_init, alpha_final: step size at the start and the end (cosine-annealed; ``alpha_final``
            defaults to ``alpha_init / 100``); steps move along the L2-normalised gradient.
        gamma_init, gamma_final: the budget's relative change per step, start and end (cosine-annealed).
        targeted, seed, early_stop: see :class:`~robustkit.attacks.base.Attack`; with ``early_stop`` an
            example stops once it has an adversarial point within the budget.

    A call may pass ``start=`` points (the paper's warm start): each example begins there (an
    adversarial start first bisected towards the input), with the norm of its perturbation as its
    budget, instead of at the input. From an adversarial point the
    budget then shrinks towards the boundary; on hardened models this finds points that a start at
    the input, where the gradient says little, misses.

    The result's ``info["norms"]`` holds per example the norm of the adversarial point returned (inf
    where none was found within the budget).
    """

    name = "fmn"
    takes_start = True

    def __init__(
        self,
        space: PerturbationSpace,
        *,
        steps: int = 100,
        alpha_init: float = 1.0,
        alpha_final: float | None = None,
        gamma_init: float = 0.05,
        gamma_final: float = 0.001,
        targeted: bool = False,
        seed: int = 0,
        early_stop: bool = True,
    ) -> None:
        super().__init__(space, loss="margin", targeted=targeted, seed=seed, early_stop=early_stop)
        if not isinstance(space, LinfBall | L2Ball):
            raise ConfigError(f"FMN works over rk.LinfBall or rk.L2Ball, got {type(space).__name__}")
        if int(steps) < 1:
            raise ConfigError(f"steps must be >= 1, got {steps!r}")
        alpha_final = alpha_init / 100 if alpha_final is None else alpha_final
        if not (alpha_init > 0 and alpha_final > 0 and 0 < gamma_final <= gamma_init < 1):
            raise ConfigError("need alpha_init, alpha_final > 0 and 0 < gamma_final <= gamma_init < 1 "
                              "(the paper's defaults: 1.0, 0.01, 0.05, 0.001)")
        self.steps = int(steps)
        self.alpha_init, self.alpha_final = float(alpha_init), float(alpha_final)
        self.gamma_init, self.gamma_final = float(gamma_init), float(gamma_final)

    @property
    def cspace(self) -> ContinuousSpace:
        assert isinstance(self.space, ContinuousSpace)
        return self.space

    def config(self) -> dict[str, Any]:
        return {"steps": self.steps, "alpha_init": self.alpha_init, "alpha_final": self.alpha_final,
                "gamma_init": self.gamma_init, "gamma_final": self.gamma_final, **super().config()}

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | Sequence[int], **kwargs: Any
    ) -> AttackResult:
        """:meth:`Attack.__call__`, adding ``info["norms"]`` (see the class)."""
        result = super().__call__(model, x, y, **kwargs)
        norms = self.cspace.norm(result.x_adv - x.to(result.x_adv.device))
        result.info["norms"] = torch.where(result.success, norms, float("inf"))
        return result

    def _ball(self, delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        """Project each perturbation onto the ball of its own radius."""
        r = radius.view(-1, *[1] * (delta.dim() - 1))
        if isinstance(self.space, LinfBall):
            return torch.maximum(torch.minimum(delta, r), -r)
        norms = delta.flatten(1).norm(dim=1).view_as(r).clamp_min(1e-12)
        return delta * torch.clamp(r / norms, max=1.0)

    def _run(self, problem: Problem) -> Best:
        space, x0 = self.cspace, problem.x
        n = len(x0)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        low, high = space._bounds_like(x0)
        dual = 1.0 if isinstance(space, LinfBall) else 2.0
        idx = torch.arange(n, device=x0.device)
        if problem.start is None:
            delta = torch.zeros_like(x0)
        else:  # the paper's warm start: adversarial starts bisected towards the input first
            delta = space._apply_mask(torch.clamp(problem.start, low, high) - x0)
            logits, _ = problem.evaluate(x0 + delta, idx)
            adv = problem.success(logits, idx)
            if bool(adv.any()):
                scale = problem.smallest_scale(x0[adv], delta[adv], idx[adv], 10)
                delta[adv] = delta[adv] * scale.view(-1, *[1] * (x0.dim() - 1))
        radius = space.norm(delta).to(x0.dtype)
        best_norm = torch.full_like(radius, float("inf"))
        x_best = x0.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x0.device)
        for k in range(self.steps):
            if self.early_stop:
                keep = (best_norm[idx] > space.eps + space.atol).nonzero().squeeze(1)
                if len(keep) == 0:
                    break
                if len(keep) < len(idx):
                    idx, delta, radius = idx[keep], delta[keep], radius[keep]
            cosine = (1 + math.cos(math.pi * k / self.steps)) / 2
            gamma = self.gamma_final + (self.gamma_init - self.gamma_final) * cosine
            alpha = self.alpha_final + (self.alpha_init - self.alpha_final) * cosine
            x = x0[idx] + delta
            logits, margin, grad = problem.loss_grad(x, idx)
            grad = space._apply_mask(grad)
            adv = problem.success(logits, idx)
            size = space.norm(delta)
            better = adv & (size < best_norm[idx])
            best_norm[idx] = torch.where(better, size, best_norm[idx])
            x_best[idx] = torch.where(better.view(shape), x, x_best[idx])
            found[idx] |= adv
            to_boundary = margin.abs() / grad.flatten(1).norm(p=dual, dim=1).clamp_min(1e-12)
            # the jump overshoots the linearised distance by 1 + gamma (the reference lands on it): on a
            # piecewise-linear model the landing point can be an exact tie that no later step leaves
            radius = torch.where(adv, torch.minimum(radius * (1 - gamma), best_norm[idx]),
                                 torch.where(found[idx], radius * (1 + gamma), (size + to_boundary) * (1 + gamma)))
            step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            delta = self._ball(space._apply_mask(delta + alpha * step), radius)
            delta = torch.clamp(x0[idx] + delta, low, high) - x0[idx]
        everyone = torch.arange(n, device=x0.device)
        within = (best_norm <= space.eps + space.atol).view(shape)
        final = torch.where(within, x_best, x0)
        logits, loss = problem.evaluate(final, everyone)
        best = Best(x0, x0.device)
        best.update(everyone, final, loss, problem.success(logits, everyone))
        return best
