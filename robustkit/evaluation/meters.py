"""The gradient-masking checks' running measurements, one small meter per check.

:func:`robustkit.evaluate` feeds each meter every batch (``update``) and asks it for its
:class:`~robustkit.evaluation.checks.Check` at the end (``check``). Under DDP each process measures
its own shard: a meter lists the counts that add up across processes in :attr:`Meter.local` and the
runner sums every meter's in one collective call; counts already global (how many examples a capped
check has taken, in data order over every process) are kept out of that list.

Example:
    >>> import torch
    >>> meter = OutputMeter()
    >>> meter.update(torch.tensor([[0.2, 0.8], [float("nan"), 1.0]]))
    >>> meter.local
    [2, 1, 1]
    >>> meter.check(sigmoid=False).passed
    False
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustkit import distributed
from robustkit.attacks import FGSM, PGD, RandomSearch
from robustkit.evaluation import checks as ck
from robustkit.models import in_chunks

__all__ = ["CoverMeter", "FGSMMeter", "GradientMeter", "Meter", "OutputMeter", "SearchMeter", "first_in_order"]


def first_in_order(count: int, limit: int, used: int) -> tuple[int, int]:
    """How many of this process's ``count`` candidates to take so that, over all processes in data
    order, at most ``limit`` are taken in total (``used`` already): (take here, new total used)."""
    before, total = distributed.prefix_and_total(count)
    room = max(0, limit - used)
    return max(0, min(count, room - before)), used + min(room, total)


class Meter:
    """Counts of one check. :attr:`fields` names the counts that add up across processes."""

    fields: tuple[str, ...] = ()

    @property
    def local(self) -> list[int]:
        """This process's counts, in :attr:`fields` order."""
        return [int(getattr(self, name)) for name in self.fields]

    @local.setter
    def local(self, values: Sequence[int]) -> None:
        for name, value in zip(self.fields, values, strict=True):
            setattr(self, name, int(value))


class OutputMeter(Meter):
    """Check (f): outputs that look like probabilities, and rows with NaN or infinite logits."""

    fields = ("rows", "probabilities", "nonfinite")

    def __init__(self) -> None:
        self.rows = self.probabilities = self.nonfinite = 0

    def update(self, logits: torch.Tensor) -> None:
        probabilities, nonfinite = ck.output_flags(logits)
        self.rows += len(logits)
        self.probabilities += int(probabilities.sum())
        self.nonfinite += int(nonfinite.sum())

    def check(self, sigmoid: bool) -> ck.Check:
        return ck.logits_check(self.probabilities, self.nonfinite, self.rows, sigmoid)


class GradientMeter(Meter):
    """Check (d): attackable examples whose input gradient is zero or not finite."""

    fields = ("examples", "zero")

    def __init__(self, feature_mask: torch.Tensor | None) -> None:
        self.feature_mask = feature_mask
        self.examples = self.zero = 0

    def update(self, model: nn.Module, inputs: torch.Tensor, y: torch.Tensor) -> None:
        flags = in_chunks(lambda a, b: ck.gradient_flags(model, a, b, self.feature_mask), inputs, y)
        self.examples += len(y)
        self.zero += int(flags.sum())

    def check(self, continuous: bool, max_zero: float) -> ck.Check:
        if self.examples == 0 and not continuous:
            return ck.Check(ck.GRADIENTS, None, "the space's encoding is not a tensor")
        return ck.gradient_check(self.zero, self.examples, max_zero)


class CoverMeter(Meter):
    """Check (c): accuracy under a margin PGD at a budget that covers the whole input range, on the first
    ``limit`` attackable examples in data order."""

    fields = ("robust",)

    def __init__(self, attack: PGD | None, budget: float | None, limit: int) -> None:
        self.attack, self.budget, self.limit = attack, budget, limit
        self.taken = 0  # global: over every process, in data order
        self.robust = 0

    def update(self, model: nn.Module, x: Any, y: torch.Tensor, ids: torch.Tensor, idx: torch.Tensor,
               correct: torch.Tensor) -> None:
        """Attack the first attackable examples (positions ``idx``) until ``limit`` are taken in all."""
        if self.attack is None:
            return
        taken, self.taken = first_in_order(len(idx), self.limit, self.taken)
        pick = idx[:taken]
        if len(pick):
            ok = correct[pick]
            result = self.attack(model, x[pick], y[pick], mask=ok, ids=ids[pick])
            self.robust += int((ok & ~result.success.to(ok.device)).sum())

    def check(self, continuous: bool, max_accuracy: float) -> ck.Check:
        if not continuous:
            return ck.Check(ck.COVERING, None, "no covering budget for a discrete space")
        return ck.covering_check(self.budget, self.taken, self.robust, max_accuracy)


class FGSMMeter(Meter):
    """Check (b): FGSM at the main budget, when the suite lists gradient attacks but no FGSM; its successes
    join the worst case."""

    fields = ("broken",)

    def __init__(self, attack: FGSM | None) -> None:
        self.attack = attack
        self.broken = 0

    def update(self, model: nn.Module, x: Any, y: torch.Tensor, ids: torch.Tensor,
               targets: torch.Tensor) -> torch.Tensor:
        """FGSM on ``targets``; returns which it broke."""
        if self.attack is None or not bool(targets.any()):
            return torch.zeros_like(targets)
        success = self.attack(model, x, y, mask=targets, ids=ids).success & targets
        self.broken += int(success.sum())
        return success

    def check(self, continuous: bool, listed_fgsm: list[int], multi_step: list[int], attacked: int,
              tolerance: float) -> ck.Check:
        if not continuous:
            return ck.Check(ck.FGSM_WEAKER, None, "FGSM needs a continuous space")
        fgsm = max(listed_fgsm) if listed_fgsm else (self.broken if self.attack is not None else None)
        return ck.fgsm_check(fgsm, max(multi_step) if multi_step else None, attacked, tolerance)


class SearchMeter(Meter):
    """Check (e): among examples the gradient attacks left robust, those a gradient-free search breaks: the
    suite's own free attacks when it lists some, else a random search on the first ``limit`` of them in data
    order (its successes join the worst case)."""

    fields = ("broken",)

    def __init__(self, search: RandomSearch | None, listed_free: bool, limit: int, queries: int) -> None:
        self.search, self.listed_free, self.limit, self.queries = search, listed_free, limit, queries
        self.tested = 0  # global: over every process, in data order
        self.broken = 0

    def update(self, model: nn.Module, x: Any, y: torch.Tensor, ids: torch.Tensor, survivors: torch.Tensor,
               by_free: torch.Tensor) -> torch.Tensor:
        """Measure on the gradient attacks' ``survivors``; returns the examples the meter's own search broke."""
        broken = torch.zeros_like(survivors)
        if self.listed_free:
            self.tested += distributed.prefix_and_total(int(survivors.sum()))[1]
            self.broken += int((survivors & by_free).sum())
        elif self.search is not None:
            pick = survivors.nonzero().squeeze(1)
            taken, self.tested = first_in_order(len(pick), self.limit, self.tested)
            pick = pick[:taken]
            if len(pick):
                result = self.search(model, x[pick], y[pick], ids=ids[pick])
                self.broken += int(result.success.sum())
                broken[pick[result.success.to(broken.device)]] = True
        return broken

    def check(self, continuous: bool, gradient_attacks: bool, tolerance: float) -> ck.Check:
        if not continuous:
            return ck.Check(ck.RANDOM_SEARCH, None, "the random search needs a continuous space")
        if not gradient_attacks:
            return ck.Check(ck.RANDOM_SEARCH, None, "no gradient attack was run")
        return ck.random_search_check(self.tested, self.broken, None if self.listed_free else self.queries,
                                      tolerance)
