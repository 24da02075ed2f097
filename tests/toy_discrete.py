"""A toy discrete space for tests: tuples of category indices, edited one variable at a time.

Variable ``j`` takes one of ``n_categories[j]`` values. The encoding concatenates the one-hots of all
variables; an edit moves one variable that still holds its original value to another category, and
the budget is the number of variables that differ from the original.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from robustkit.spaces import DiscreteSpace, Edit

Obj = tuple[int, ...]


class CategoricalSpace(DiscreteSpace[Obj]):
    """Tuples of category indices within ``budget`` changed variables of the original."""

    name = "categorical"

    def __init__(self, n_categories: Sequence[int], budget: float) -> None:
        super().__init__(budget)
        self.n_categories = tuple(int(n) for n in n_categories)
        self.offsets = tuple(itertools.accumulate((0, *self.n_categories[:-1])))
        self.width = sum(self.n_categories)

    def encode(self, xs: Sequence[Obj], device: torch.device | str = "cpu") -> torch.Tensor:
        out = torch.zeros(len(xs), self.width)
        for row, x in enumerate(xs):
            for j, value in enumerate(x):
                out[row, self.offsets[j] + value] = 1.0
        return out.to(device)

    @staticmethod
    def changed(x: Obj, original: Obj) -> int:
        return sum(a != b for a, b in zip(x, original, strict=True))

    def candidates(self, x: Obj, original: Obj) -> list[Edit]:
        if self.changed(x, original) + 1 > self.budget:
            return []
        return [
            Edit(j, value)
            for j, n in enumerate(self.n_categories)
            if x[j] == original[j]
            for value in range(n)
            if value != x[j]
        ]

    def apply(self, x: Obj, edit: Edit) -> Obj:
        return (*x[: edit.position], int(edit.value), *x[edit.position + 1 :])

    def valid(self, x: Any) -> bool:
        return (
            isinstance(x, tuple)
            and len(x) == len(self.n_categories)
            and all(isinstance(v, int) and 0 <= v < n for v, n in zip(x, self.n_categories, strict=True))
        )

    def contains(self, x_adv: Sequence[Any], x: Sequence[Any]) -> torch.Tensor:
        if len(x_adv) != len(x):
            return torch.zeros(len(x), dtype=torch.bool)
        pairs = zip(x_adv, x, strict=True)
        ok = [self.valid(a) and self.valid(b) and self.changed(a, b) <= self.budget for a, b in pairs]
        return torch.tensor(ok, dtype=torch.bool)

    def objects(self) -> Iterator[Obj]:
        """Every object of the space (for brute force over small spaces)."""
        return itertools.product(*(range(n) for n in self.n_categories))


def logistic_model(weights: Sequence[Sequence[float]], bias: float) -> nn.Linear:
    """One logit ``z = sum_j weights[j][x_j] + bias`` on the one-hot encoding: class 1 when z > 0."""
    flat = [w for per_variable in weights for w in per_variable]
    model = nn.Linear(len(flat), 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([flat]))
        model.bias.fill_(bias)
    return model


def score(weights: Sequence[Sequence[float]], bias: float, x: Obj) -> float:
    """The logistic model's logit ``z`` of one object, in closed form."""
    return bias + sum(weights[j][v] for j, v in enumerate(x))
