"""Accuracy-vs-budget curves from one minimal-norm attack run.

A minimal-norm attack (FMN, or FAB) gives each example the smallest adversarial perturbation it
found; robust accuracy at a budget is then the share of examples correctly classified whose
smallest perturbation is larger, for every budget at once, at the cost of one attack (FMN, by
default warm-started from one APGD-CE run at the largest budget: two attacks, whatever the number
of budgets).

Example:
    >>> import torch, robustkit as rk
    >>> model = torch.nn.Linear(1, 2, bias=False)  # class 0 when x > 0, else class 1
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    >>> x, y = torch.tensor([[0.1], [0.3], [0.5], [-0.2]]), torch.tensor([0, 0, 0, 0])
    >>> curve = robustness_curve(model, x, y, rk.LinfBall(eps=1.0, bounds=(-1.0, 1.0)), [0.0, 0.2, 0.4],
    ...                          steps=50)
    >>> curve.robust_accuracy, round(curve.median_norm, 2)  # the minimal distances are 0.1, 0.3 and 0.5
    ([0.75, 0.5, 0.25], 0.3)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from robustkit._renamed import renamed
from robustkit.attacks.apgd import APGD
from robustkit.attacks.fab import FAB
from robustkit.attacks.fmn import FMN
from robustkit.errors import ConfigError, DataError
from robustkit.models import frozen_eval, in_chunks, logits_of, model_device
from robustkit.spaces import ContinuousSpace, L2Ball, LinfBall

__all__ = ["Curve", "robustness_curve"]


@dataclass
class Curve:
    """Robust accuracy at each budget, from each example's smallest adversarial perturbation found.

    Attributes:
        budgets: the budgets, ascending.
        robust_accuracy: per budget, the share of all examples correctly classified with no
            adversarial point found within that budget.
        clean_accuracy: the share correctly classified.
        median_norm: the median over the correctly classified examples of the smallest perturbation
            found (inf when none was found for half of them or more).
        norms: per example, the smallest perturbation found (0 when misclassified clean, inf when none).
        method: the attack that gave the norms.
    """

    budgets: list[float]
    robust_accuracy: list[float]
    clean_accuracy: float
    median_norm: float
    norms: torch.Tensor
    method: str

    @property
    def eps(self) -> list[float]:
        """Deprecated (removed in robustkit 0.3): :attr:`budgets`."""
        warnings.warn("Curve.eps is deprecated and will be removed in robustkit 0.3: use Curve.budgets",
                      DeprecationWarning, stacklevel=2)
        return self.budgets


def robustness_curve(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    space: ContinuousSpace,
    budgets: Sequence[float] | None = None,
    *,
    method: str = "fmn",
    steps: int = 100,
    batch_size: int = 256,
    seed: int = 0,
    warm_start: bool = True,
    eps: Sequence[float] | None = None,
) -> Curve:
    """Robust accuracy of ``model`` on ``(x, y)`` at each of the ``budgets`` from one minimal-norm run.

    Args:
        space: an ``LinfBall`` or ``L2Ball`` giving the norm and the bounds (its budget is ignored).
        budgets: the budgets of the curve.
        method: "fmn" (Pintor et al. 2021, untargeted) or "fab" (FAB-T over the 9 most likely other
            classes, with a final bisection).
        steps: iterations of the attack (per target for FAB).
        batch_size: examples per attack call; seed: the attack's seed.
        warm_start: with "fmn", first run APGD-CE (``steps`` steps) at the largest budget and start FMN
            from the adversarial points it finds, bisected towards their inputs (the FMN
            paper's warm start). On hardened models FMN from the clean input alone misses points that
            APGD finds, so the curve would overstate robustness; False runs FMN alone, at half the cost.
        eps: the old name of ``budgets``, deprecated (a :class:`DeprecationWarning`; both: a ConfigError).
    """
    if not isinstance(space, LinfBall | L2Ball):
        raise ConfigError(f"curves need rk.LinfBall or rk.L2Ball, got {type(space).__name__}")
    given = renamed("eps", eps, "budgets", budgets, where="robustness_curve")
    levels = sorted(float(e) for e in given or [])
    if not levels or levels[0] < 0:
        raise ConfigError(f"budgets must be a non-empty list of budgets >= 0, got {given!r}")
    if method not in ("fmn", "fab"):
        raise ConfigError(f"method must be 'fmn' or 'fab', got {method!r}")
    device = model_device(model)
    x, y = x.to(device), torch.as_tensor(y, device=device).long()
    if len(x) == 0 or len(x) != len(y):
        raise DataError(f"need as many labels as inputs (and at least one), got {len(x)} and {len(y)}")
    space.check_inputs(x)
    # a budget no smaller than the box: every adversarial point found counts, whatever its norm
    wide = space.with_budget(space.covering_budget(x) or max(levels[-1], 1.0) * 1e3)
    attack = (FMN(wide, steps=steps, seed=seed, early_stop=False) if method == "fmn"
              else FAB(wide, steps=steps, seed=seed, early_stop=False, search_steps=10))
    with torch.no_grad(), frozen_eval(model):
        correct = in_chunks(lambda a: logits_of(model(a)), x).argmax(1) == y
    first = (APGD(space.with_budget(levels[-1]), steps=steps, loss="ce", seed=seed)
             if warm_start and method == "fmn" and levels[-1] > 0 else None)
    norms = torch.zeros(len(x), device=device, dtype=x.dtype)
    for start in range(0, len(x), batch_size):
        part = slice(start, start + batch_size)
        ids = torch.arange(start, min(start + batch_size, len(x)), device=device)
        begin = None
        if first is not None:
            found = first(model, x[part], y[part], mask=correct[part], ids=ids)
            begin = torch.where(found.success.view(-1, *[1] * (x.dim() - 1)), found.x_adv, x[part])
        result = attack(model, x[part], y[part], mask=correct[part], ids=ids, start=begin)
        norms[part] = torch.where(correct[part], result.info["norms"].to(norms.dtype), norms[part])
    n = len(x)
    robust = [float((correct & (norms > e)).sum()) / n for e in levels]
    median = float(norms[correct].median()) if bool(correct.any()) else float("nan")
    return Curve(levels, robust, float(correct.sum()) / n, median, norms.cpu(), method)

