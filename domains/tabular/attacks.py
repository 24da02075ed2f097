"""Tabular attacks beyond the continuous relaxation: a categorical search space, and the worst case of all.

:class:`CategoricalSpace` is a :class:`~robustkit.spaces.DiscreteSpace` over rows. A row is a tuple
with one entry per schema column: the number itself for numeric columns, the index of the category
for categorical ones. An edit changes one cell: a mutable categorical column with few categories to
another category, and (``numeric_steps``) a mutable binary column flipped or a mutable integer column
moved by one. Each edit pays the schema's cost, the row's total stays within the budget, and bounds,
directions and relations are kept, so every row the shared :class:`~robustkit.DiscreteSearch`
returns passes ``schema.validate``. The model takes ``space.encode(rows)``: the same attack variable
as :func:`~domains.tabular.space.encode` (in column order: a number, or a one-hot block).

:class:`SparseSchemaSpace` is the schema's continuous space with a soft-thresholding projection, so
that PGD reaches the sparse corners of the cost ball where weighted-L1 optima lie.

:func:`worst_case` attacks fraud rows with the strongest suite (:func:`strongest_attacks`: PGD with
restarts over both spaces, APGD with two losses and the categorical search), then runs the search
again from the best row found for each row still detected (:class:`Anchored` rows: costs counted from
the original), turns every result into rows that pass ``schema.validate`` (:func:`repair_rows`),
scores them again, and keeps per row the cheapest successful evasion. :class:`SearchTraining` trains
against PGD followed by the search.

Example:
    >>> import pandas as pd, torch
    >>> from domains.tabular.schema import Column, Schema
    >>> schema = Schema([Column("shop", "categorical", mutable=True, categories=["a", "b", "c"], cost=1.0),
    ...                  Column("n", "integer", mutable=True, lower=0, upper=5, cost=0.5)], budget=1.5)
    >>> space = CategoricalSpace(schema)
    >>> rows = space.rows(encode(schema, pd.DataFrame({"shop": ["a"], "n": [2]})))
    >>> rows
    [(0, 2.0)]
    >>> space.encode(rows).tolist()
    [[1.0, 0.0, 0.0, 2.0]]
    >>> sorted((e.position, e.value) for e in space.candidates(rows[0], rows[0]))
    [(0, 1), (0, 2), (1, 1.0), (1, 3.0)]
    >>> model = torch.nn.Linear(4, 2)   # fraud (class 1) unless the shop is "c"
    >>> with torch.no_grad():
    ...     _ = model.weight.zero_(), model.bias.copy_(torch.tensor([0.0, 1.0]))
    ...     model.weight[0, 2] = 2.0
    >>> result = DiscreteSearch(space)(model, rows, [1])
    >>> result.x_adv, bool(result.success[0]), space.frame(result.x_adv)["shop"].tolist()
    ([(2, 2.0)], True, ['c'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from domains.tabular.schema import Schema
from domains.tabular.space import SchemaSpace, encode, layout, repair_rows
from robustkit.attacks import APGD, PGD, DiscreteSearch
from robustkit.attacks.base import Attack
from robustkit.errors import ConfigError, DataError
from robustkit.models import ThresholdModel, frozen_eval, logits_of, model_device
from robustkit.spaces import DiscreteSpace, Edit
from robustkit.training.methods import Batch, Loss, Method

__all__ = ["Anchored", "CategoricalSpace", "Row", "SearchTraining", "SparseSchemaSpace", "WorstCase", "changes",
           "describe_changes", "fraud_probability", "repair_rows", "strongest_attacks", "worst_case"]

#: a row of the categorical search: the value of each numeric column, the category index of each categorical one
Row = tuple[float, ...]


class Anchored(tuple[float, ...]):
    """A row whose search starts away from its original row: its cost is counted from ``origin``.

    Example:
        >>> row = Anchored((1, 2.0), origin=(0, 2.0))
        >>> row, row.origin
        ((1, 2.0), (0, 2.0))
    """

    origin: Row

    def __new__(cls, values: Sequence[float], origin: Sequence[float]) -> Anchored:
        obj = super().__new__(cls, tuple(values))
        obj.origin = tuple(origin)
        return obj


#: most edits of one search: the greedy search adopts any edit that raises the loss, and on a flat loss
#: float noise between batch sizes can pass for a rise, so edits could cycle without a bound
MAX_EDITS = 64
#: slack on the budget when offering edits: exact sums such as 1.5 + 1.5 = 3 stay allowed, and the
#: result stays well inside ``Schema.validate``'s own tolerance
_BUDGET_SLACK = 1e-9


class CategoricalSpace(DiscreteSpace[Row]):
    """Single-cell edits of rows under a schema: categories, binary flips and integer steps of one.

    Args:
        schema: the columns and their rules; only mutable columns are edited.
        budget: the cost budget of a row (default: the schema's).
        max_categories: categorical columns with more categories than this are left to the
            continuous attacks (the search tries every category of a searched column).
        numeric_steps: also flip mutable binary columns and move mutable integer columns by one.
    """

    name = "schema-categorical"

    def __init__(self, schema: Schema, budget: float | None = None, *, max_categories: int = 16,
                 numeric_steps: bool = True) -> None:
        super().__init__(schema.budget if budget is None else budget)
        if int(max_categories) < 2:
            raise ConfigError(f"max_categories must be >= 2, got {max_categories!r}")
        self.schema = schema
        self.layout = layout(schema)
        self.columns = list(schema.columns)
        self.costs = [c.cost for c in self.columns]
        self.categorical = [not c.numeric for c in self.columns]
        # where each column lives in the attack variable: (start, size), size 1 for a numeric column
        self.where: list[tuple[int, int]] = []
        i_num = i_blk = 0
        for c in self.columns:
            if c.numeric:
                self.where.append((self.layout.numeric[i_num], 1))
                i_num += 1
            else:
                self.where.append(self.layout.blocks[i_blk])
                i_blk += 1
        self.searched = [
            k for k, c in enumerate(self.columns)
            if c.mutable and ((not c.numeric and len(c.categories or []) <= int(max_categories))
                              or (numeric_steps and c.discrete))
        ]
        index = {c.name: k for k, c in enumerate(self.columns)}
        self.relations_of: dict[int, list[Any]] = {
            k: [r for r in schema.relations if self.columns[k].name in r.coefficients] for k in self.searched
        }
        self._index = index

    def __repr__(self) -> str:
        names = ", ".join(self.columns[k].name for k in self.searched)
        return f"CategoricalSpace(budget={self.budget:g}, searched=[{names}])"

    # ----------------------------------------------------------------- rows <-> tensors and frames
    def rows(self, x: torch.Tensor, origin: torch.Tensor | None = None) -> list[Row]:
        """Rows of an attack variable (N, width): numbers as they are, categories at their argmax.

        With ``origin`` (the attack variable of the original rows), :class:`Anchored` rows: a search
        from them counts costs from ``origin``.
        """
        if origin is not None:
            return [Anchored(a, o) for a, o in zip(self.rows(x), self.rows(origin), strict=True)]
        x64 = x.detach().cpu().double()
        parts = []
        for k, (start, size) in enumerate(self.where):
            if self.categorical[k]:
                parts.append(x64[:, start:start + size].argmax(dim=1).double())
            else:
                parts.append(x64[:, start])
        if not parts or len(x64) == 0:
            return []
        table = torch.stack(parts, dim=1).tolist()
        cat = self.categorical
        return [tuple(int(v) if cat[k] else float(v) for k, v in enumerate(row)) for row in table]

    def encode(self, xs: Sequence[Row], device: torch.device | str = "cpu") -> torch.Tensor:
        """The attack variable of ``xs`` (float32, shape (N, width)), as the tabular models take it."""
        out = np.zeros((len(xs), self.layout.width), dtype=np.float64)
        if len(xs):
            arr = np.asarray(xs, dtype=np.float64).reshape(len(xs), len(self.columns))
            n = np.arange(len(xs))
            for k, (start, _) in enumerate(self.where):
                if self.categorical[k]:
                    out[n, start + arr[:, k].astype(np.int64)] = 1.0
                else:
                    out[:, start] = arr[:, k]
        return torch.as_tensor(out, dtype=torch.float32, device=device)

    def frame(self, xs: Sequence[Row]) -> pd.DataFrame:
        """The rows as a DataFrame in the schema's columns (category names; integers as int64)."""
        arr = np.asarray(xs, dtype=np.float64).reshape(len(xs), len(self.columns))
        out: dict[str, Any] = {}
        for k, c in enumerate(self.columns):
            if self.categorical[k]:
                out[c.name] = np.asarray(c.categories, dtype=object)[arr[:, k].astype(np.int64)]
            else:
                out[c.name] = arr[:, k].astype(np.int64) if c.discrete else arr[:, k]
        return pd.DataFrame(out)

    # ----------------------------------------------------------------- edits
    def _cell_cost(self, k: int, value: float, original: float) -> float:
        if self.categorical[k]:
            return self.costs[k] if value != original else 0.0
        return self.costs[k] * abs(value - original)

    def cost(self, x: Row, original: Row) -> float:
        """The schema's cost of changing ``original`` into ``x``."""
        return sum(self._cell_cost(k, x[k], original[k]) for k in range(len(self.columns)))

    def _relations_hold(self, x: Row, k: int, value: float) -> bool:
        for r in self.relations_of[k]:
            values = {n: (value if n == self.columns[k].name else x[self._index[n]]) for n in r.coefficients}
            if not bool(r.holds(values)):
                return False
        return True

    def candidates(self, x: Row, original: Row) -> list[Edit]:
        """Every single-cell edit that keeps ``x`` an allowed change of ``original`` (Edit.cost: the cost it adds).

        For an :class:`Anchored` ``x``, of its ``origin``.
        """
        original = x.origin if isinstance(x, Anchored) else original
        spent = self.cost(x, original)
        limit = self.budget + _BUDGET_SLACK * (1.0 + self.budget)
        edits = []
        for k in self.searched:
            c, v, o = self.columns[k], x[k], original[k]
            before = self._cell_cost(k, v, o)
            if self.categorical[k]:
                options: list[float] = [b for b in range(len(c.categories or [])) if b != v]
            else:
                options = [1.0 - v] if c.type == "binary" else [v - 1.0, v + 1.0]
            for new in options:
                if not self.categorical[k]:
                    if (c.lower is not None and new < c.lower) or (c.upper is not None and new > c.upper):
                        continue
                    if (c.direction == "increase" and new < o) or (c.direction == "decrease" and new > o):
                        continue
                added = self._cell_cost(k, new, o) - before
                if spent + added > limit:
                    continue
                if not self.categorical[k] and not self._relations_hold(x, k, new):
                    continue
                edits.append(Edit(k, new, added))
        return edits

    def apply(self, x: Row, edit: Edit) -> Row:
        values = (*x[:edit.position], edit.value, *x[edit.position + 1:])
        return Anchored(values, x.origin) if isinstance(x, Anchored) else tuple(values)

    def scores(self, x: Row, grad: torch.Tensor, edits: Sequence[Edit]) -> torch.Tensor:
        """First-order loss change of each edit: ``grad[new] - grad[old]`` (categories), ``grad x step`` (numbers)."""
        if not edits:
            return grad.new_zeros(0)
        up, down, step = [], [], []
        for e in edits:
            start, _ = self.where[e.position]
            if self.categorical[e.position]:
                up.append(start + int(e.value))
                down.append(start + int(x[e.position]))
                step.append(1.0)
            else:
                up.append(start)
                down.append(start)
                step.append(float(e.value) - float(x[e.position]))
        g = grad.flatten()
        up_t = torch.tensor(up, device=g.device)
        down_t = torch.tensor(down, device=g.device)
        step_t = torch.tensor(step, device=g.device, dtype=g.dtype)
        categorical = torch.tensor([self.categorical[e.position] for e in edits], device=g.device)
        return torch.where(categorical, g[up_t] - g[down_t], g[up_t] * step_t)

    # ----------------------------------------------------------------- the validity oracle
    def _well_formed(self, row: Any) -> bool:
        if not isinstance(row, tuple) or len(row) != len(self.columns):
            return False
        if isinstance(row, Anchored) and not self._well_formed(row.origin):
            return False
        for k, v in enumerate(row):
            if self.categorical[k]:
                if not isinstance(v, int | np.integer) or not 0 <= int(v) < len(self.columns[k].categories or []):
                    return False
            elif not isinstance(v, int | float | np.number) or not np.isfinite(float(v)):
                return False
        return True

    def contains(self, x_adv: Sequence[Row], x: Sequence[Row]) -> torch.Tensor:
        """Per row: is ``x_adv[i]`` an allowed change of ``x[i]`` (``Schema.validate`` on the rows)?

        :class:`Anchored` rows are judged against their ``origin``, which ``x_adv[i]`` and ``x[i]`` must share.
        """
        if len(x_adv) != len(x):
            raise DataError(f"adversarial rows ({len(x_adv)}) and original rows ({len(x)}) differ in number")
        origins = [b.origin if isinstance(b, Anchored) else b for b in x]
        ok = np.array([self._well_formed(a) and self._well_formed(b)
                       and (a.origin if isinstance(a, Anchored) else b) == o
                       for a, b, o in zip(x_adv, x, origins, strict=True)], dtype=bool)
        if ok.any():
            keep = np.flatnonzero(ok).tolist()
            adv = self.frame([x_adv[i] for i in keep])
            orig = self.frame([origins[i] for i in keep])
            ok[keep] = self.schema.with_budget(self.budget).validate(adv, orig).to_numpy()
        return torch.as_tensor(ok)


# ----------------------------------------------------------------------------- a sparser projection
class SparseSchemaSpace(SchemaSpace):
    """:class:`~domains.tabular.space.SchemaSpace` whose projection onto the cost budget soft-thresholds.

    ``SchemaSpace.project`` fits the budget by scaling the whole change down, so a projected step
    keeps every column it touched and PGD stalls inside the cost ball. Here each numeric change
    shrinks by ``t / cost`` and each categorical block's by ``t / cost`` in L1 size (``t`` found by
    bisection): the Euclidean projection onto the cost ball in cost-scaled coordinates, the metric
    of the ascent step. Columns that help least drop out, and the budget goes to the few that help
    most, the corners where weighted-L1 optima lie. Bounds, simplices and relations are handled by
    ``SchemaSpace.project`` before and after, so :meth:`contains` holds as there.

    Example:
        >>> import torch
        >>> from domains.tabular.schema import Column, Schema
        >>> schema = Schema([Column("a", mutable=True, cost=1.0), Column("b", mutable=True, cost=1.0)], budget=1.0)
        >>> x, wish = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[2.0, 0.5]], dtype=torch.float64)
        >>> SchemaSpace(schema).project(wish, x).round(decimals=3).tolist()
        [[0.8, 0.2]]
        >>> SparseSchemaSpace(schema).project(wish, x).round(decimals=3).tolist()
        [[1.0, 0.0]]
    """

    name = "schema-cost-sparse"

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        unlimited = self.with_budget(1e300)
        assert isinstance(unlimited, SchemaSpace)
        z = SchemaSpace.project(unlimited, x_adv, x)  # bounds, simplices, relations
        d = z - x
        limit = self.eps * (1.0 - 1e-5)
        over = self.norm(d) > limit
        if not bool(over.any()):
            return z
        w = self._placed(self.weight, d).clamp_min(1e-12)
        numeric = self._placed(self.numeric, d)
        integer = self._placed(self.integer, d) & numeric
        # the cost after shrinking by t, from per-row sizes gathered once: numeric |d| (cost w, integers
        # rounded as norm() rounds them) and each categorical block's L1 size (cost c, at most 1 change)
        size = torch.where(numeric, d.abs(), torch.zeros_like(d))
        blocks = torch.stack([d[:, a:a + k].abs().sum(dim=1) for a, k, _ in self.blocks], dim=1) if self.blocks \
            else d.new_zeros(len(d), 0)
        c = torch.tensor([c for _, _, c in self.blocks], dtype=d.dtype, device=d.device)

        def cost(t: torch.Tensor) -> torch.Tensor:
            moved = (size - t / w).clamp(min=0.0)
            moved = torch.where(integer, torch.floor(moved + 0.5), moved)
            return (w * moved * numeric).sum(dim=1) + (c * (blocks - t / c).clamp(0.0, 1.0)).sum(dim=1)

        top = (size * w).amax(dim=1, keepdim=True)
        if self.blocks:
            top = torch.maximum(top, (blocks * c).amax(dim=1, keepdim=True))
        lo, hi = torch.zeros_like(top), top + 1.0
        for _ in range(30):  # a bracket 2**-30 of the largest cost wide; the final projection fits the budget
            mid = (lo + hi) / 2
            fits = (cost(mid) <= limit).unsqueeze(1)
            hi, lo = torch.where(fits, mid, hi), torch.where(fits, lo, mid)
        d = torch.where(over.unsqueeze(1), self._shrink(d, hi, w, numeric), d)
        return SchemaSpace.project(self, x + d, x)  # relations again, and the budget exactly

    def _shrink(self, d: torch.Tensor, t: torch.Tensor, w: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        out = torch.where(numeric, d.sign() * (d.abs() - t / w).clamp(min=0.0), d)
        if self.blocks:
            out = out.clone()
            for start, size, c in self.blocks:
                block = d[:, start:start + size]
                s = block.abs().sum(dim=1, keepdim=True)
                out[:, start:start + size] = block * ((s - t / c) / s.clamp_min(1e-12)).clamp(min=0.0)
        return out


# ----------------------------------------------------------------------------- the worst case of a suite
def strongest_attacks(schema: Schema, budget: float | None = None, seed: int = 0) -> dict[str, Attack]:
    """The strongest suite under ``schema``.

    PGD-50 x 5 restarts over the training space (:class:`SchemaSpace`) and over
    :class:`SparseSchemaSpace` (step a quarter of the budget), APGD-CE-100 and APGD-margin-100 over
    :class:`SparseSchemaSpace`, and the categorical search (margin loss, 16 candidates per edit, at
    most :data:`MAX_EDITS` edits).

    Example:
        >>> from domains.tabular.synthetic import card_schema
        >>> list(strongest_attacks(card_schema()))
        ['pgd', 'pgd-sparse', 'apgd-ce', 'apgd-margin', 'search']
    """
    space = SchemaSpace(schema, budget)
    sparse = SparseSchemaSpace(schema, budget)
    return {
        "pgd": PGD(space, steps=50, restarts=5, seed=seed),
        "pgd-sparse": PGD(sparse, steps=50, restarts=5, step_size=sparse.budget / 4, seed=seed),
        "apgd-ce": APGD(sparse, steps=100, loss="ce", seed=seed),
        "apgd-margin": APGD(sparse, steps=100, loss="margin", seed=seed),
        "search": DiscreteSearch(CategoricalSpace(schema, space.budget), candidates_per_step=16, loss="margin",
                                 max_steps=MAX_EDITS, seed=seed),
    }


def fraud_probability(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """P(fraud) of each row (float64): of the wrapped model when ``model`` is a :class:`ThresholdModel`."""
    inner = model.model if isinstance(model, ThresholdModel) else model
    assert isinstance(inner, nn.Module)
    with frozen_eval(inner), torch.no_grad():
        return torch.softmax(logits_of(inner(x.to(model_device(inner)))).double(), dim=1)[:, 1].cpu()


def _decided_fraud(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with frozen_eval(model), torch.no_grad():
        return (logits_of(model(x.to(model_device(model)))).argmax(dim=1) == 1).cpu()


def changes(schema: Schema, adv: pd.DataFrame, original: pd.DataFrame) -> pd.DataFrame:
    """One line per changed cell: ``row`` (the index of ``original``), ``column``, ``original``,
    ``adversarial`` and the ``cost`` of the change.

    Example:
        >>> from domains.tabular.synthetic import card_schema, generate
        >>> df = generate(2, seed=0)
        >>> adv = df.assign(hour=df["hour"] + 2)
        >>> changes(card_schema(), adv, df)[["row", "column", "cost"]].values.tolist()
        [[0, 'hour', 0.2], [1, 'hour', 0.2]]
    """
    parts = []
    for c in schema.columns:
        a, o = adv[c.name].to_numpy(), original[c.name].to_numpy()
        if c.numeric:
            cost = c.cost * np.abs(a.astype(float) - o.astype(float))
            moved = a.astype(float) != o.astype(float)
        else:
            moved = a.astype(str) != o.astype(str)
            cost = c.cost * moved
        idx = np.flatnonzero(moved)
        if len(idx):
            parts.append(pd.DataFrame({"row": original.index[idx], "column": c.name, "original": o[idx],
                                       "adversarial": a[idx], "cost": np.round(cost[idx], 12)}))
    if not parts:
        return pd.DataFrame({"row": [], "column": [], "original": [], "adversarial": [], "cost": []})
    return pd.concat(parts, ignore_index=True).sort_values(["row"], kind="stable").reset_index(drop=True)


@dataclass
class WorstCase:
    """What :func:`worst_case` found.

    Attributes:
        rows: per attacked row, the adversarial row kept (the original where no attack lowered
            P(fraud)); always valid under the schema.
        table: per row ``detected_clean``, ``p_fraud_clean``, ``p_fraud_adversarial``, ``fooled``,
            ``valid``, ``repair_failed`` (an attack's point for this row could not be made a valid
            row), ``attack`` (whose row was kept), ``cost`` and ``changed`` (``column: original ->
            adversarial (cost)``).
        fooled_by: per attack of the suite, a bool per row: did its own valid row evade detection?
        repair_failed: per attack, a bool per row: did its point fail to become a valid row?
        refined: rows first evaded by the search started from the best row of the suite.
        attacked_by: per attack (and ``refine``), a bool per row: did it attack the row? With ``pruned``,
            a member attacks only the detected rows no earlier member evaded.
        pruned: whether :func:`worst_case` ran pruned.
    """

    rows: pd.DataFrame
    table: pd.DataFrame
    fooled_by: dict[str, np.ndarray] = field(default_factory=dict)
    repair_failed: dict[str, np.ndarray] = field(default_factory=dict)
    refined: int = 0
    attacked_by: dict[str, np.ndarray] = field(default_factory=dict)
    pruned: bool = False

    def summary(self) -> dict[str, Any]:
        """Recall under the worst case, success among detected rows, costs, repair failures, and per attack
        the rows it attacked and evaded; ``recall_attacked_by_attack`` (each attack on its own) only
        when every attack saw every detected row (not ``pruned``)."""
        t = self.table
        n, detected = len(t), t["detected_clean"].to_numpy(dtype=bool)
        fooled = t["fooled"].to_numpy(dtype=bool)
        costs = t["cost"].to_numpy()[fooled]
        seen = {k: self.attacked_by.get(k, detected) for k in self.repair_failed}
        tried = [v[seen[k]] for k, v in self.repair_failed.items()]
        out: dict[str, Any] = {
            "recall_clean": float(detected.mean()) if n else 0.0,
            "recall_attacked_strongest": float((detected & ~fooled).mean()) if n else 0.0,
            "attack_success_rate_strongest": float(fooled.sum() / max(1, detected.sum())),
            "pruned": self.pruned,
            "rows_attacked_by_attack": {k: int(v.sum()) for k, v in self.attacked_by.items()},
            "rows_evaded_by_attack": {k: int(v.sum()) for k, v in self.fooled_by.items()},
            "successes_added_by_refined_search": self.refined,
            "mean_cost_successful": float(costs.mean()) if len(costs) else None,
            "valid_adversarial_share": float(t["valid"].mean()) if n else 1.0,
            "repair_failed_share": float(np.concatenate(tried).mean()) if sum(map(len, tried)) else 0.0,
        }
        if not self.pruned:
            out["recall_attacked_by_attack"] = {k: float((detected & ~v).mean()) if n else 0.0
                                                for k, v in self.fooled_by.items()}
        return out


class _Best:
    """Per row, the adversarial row kept so far: a success over a failure, then the cheaper success
    or the failure with the lower P(fraud)."""

    def __init__(self, original: pd.DataFrame, p_clean: np.ndarray, detected: np.ndarray) -> None:
        n = len(original)
        self.rows = original.copy()
        self.p = p_clean.copy()
        self.cost = np.zeros(n)
        self.fooled = np.zeros(n, dtype=bool)
        self.detected = detected
        self.attack = np.where(detected, "none", "none (missed when clean)").astype(object)
        self.failed = np.zeros(n, dtype=bool)

    def offer(self, name: str, at: np.ndarray, rows: pd.DataFrame, fooled: np.ndarray, p: np.ndarray,
              cost: np.ndarray, failed: np.ndarray) -> np.ndarray:
        """Take the rows (for the positions ``at``) that beat the ones held; returns where ``rows`` was taken."""
        self.failed[at] |= failed
        held = self.fooled[at]
        better = ((fooled & ~held) | (fooled & held & (cost < self.cost[at]))
                  | (~fooled & ~held & self.detected[at] & (p < self.p[at])))
        if better.any():
            taken = at[better]
            self.rows.iloc[taken, :] = rows.iloc[np.flatnonzero(better)][self.rows.columns].to_numpy()
            self.p[taken], self.cost[taken], self.fooled[taken] = p[better], cost[better], fooled[better]
            self.attack[taken] = name
        return better


def _judge(model: nn.Module, schema: Schema, x_adv: torch.Tensor, x: torch.Tensor, original: pd.DataFrame
           ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Points of detected rows -> rows that pass ``schema.validate`` (:func:`repair_rows`), scored again:
    rows, fooled, P(fraud), cost and repair failure per row."""
    rows, failed, _ = repair_rows(schema, x_adv, x, original)
    x_rows = encode(schema, rows)
    fooled = ~_decided_fraud(model, x_rows).numpy()
    return rows, fooled, fraud_probability(model, x_rows).numpy(), schema.cost(rows, original).to_numpy(), failed


def _number(value: Any) -> str:
    return f"{value:.10g}" if isinstance(value, float | np.floating) else str(value)


def describe_changes(schema: Schema, adv: pd.DataFrame, original: pd.DataFrame) -> list[str]:
    """Per row of ``original``, its changed cells as ``column: original -> adversarial (cost)``, joined by ``; ``."""
    cells = changes(schema, adv, original)
    described = [f"{c}: {_number(o)} -> {_number(a)} ({v:.4g})"
                 for c, o, a, v in zip(cells["column"], cells["original"], cells["adversarial"], cells["cost"],
                                       strict=True)]
    joined = pd.Series(described, dtype=object).groupby(cells["row"].to_numpy()).agg("; ".join)
    return [joined.get(i, "") for i in original.index]


def worst_case(model: nn.Module, schema: Schema, x: torch.Tensor, original: pd.DataFrame, *,
               attacks: Mapping[str, Attack] | None = None, budget: float | None = None, seed: int = 0,
               refine: bool = True, prune: bool = True) -> WorstCase:
    """Attack fraud rows with every attack of a suite and keep, per row, the cheapest valid evasion found
    (pruned: of the first member that evades the row).

    Args:
        model: the decided model over the attack variable (argmax 1 = flagged as fraud), e.g. a
            :class:`~robustkit.ThresholdModel` around a :class:`~domains.tabular.model.TabularMLP`.
        schema: the threat model; ``budget`` overrides its budget.
        x: the attack variable of the rows (``encode(schema, original)``), all of them fraud.
        original: the rows themselves (the schema's columns; other columns are ignored).
        attacks: name -> attack over a :class:`SchemaSpace` (continuous) or a :class:`CategoricalSpace`
            (discrete); default :func:`strongest_attacks`.
        seed: seed of the default suite.
        refine: then run the categorical search again from the best row found for each row still
            detected (its costs counted from the original row), which finds evasions that need both
            numeric moves and category changes.
        prune: attack with each member only the rows no earlier member evaded. The rows evaded are
            the same; a row's kept evasion is then the first member's, perhaps not the cheapest, and
            each member's own figures cover only the rows it saw (``attacked_by``). False: every
            member attacks every detected row, for what each attack finds on its own.

    Only rows flagged on clean input are attacked. Each attack's points are decoded, checked with
    ``schema.validate`` and replaced by the original row where a check fails (``repair_failed``);
    every kept row is scored again, so ``fooled`` always refers to a valid row.
    """
    schema = schema if budget is None else schema.with_budget(budget)
    attacks = dict(strongest_attacks(schema, seed=seed) if attacks is None else attacks)
    original = original[schema.names]
    n = len(original)
    if len(x) != n:
        raise DataError(f"x has {len(x)} rows but original has {n}")
    x = x.detach().cpu()
    y = torch.ones(n, dtype=torch.long)
    detected = _decided_fraud(model, x).numpy()
    p_clean = fraud_probability(model, x).numpy()
    best = _Best(original, p_clean, detected)
    fooled_by: dict[str, np.ndarray] = {}
    failed_by: dict[str, np.ndarray] = {}
    attacked_by: dict[str, np.ndarray] = {}

    def judge(name: str, at: np.ndarray, x_adv: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Score the points of the rows ``at`` and offer them: per row of the suite, taken, fooled and failed."""
        rows, fooled, p, cost, failed = _judge(model, schema, x_adv[at], x[at], original.iloc[at])
        out = np.zeros((3, n), dtype=bool)
        out[0, at], out[1, at], out[2, at] = best.offer(name, at, rows, fooled, p, cost, failed), fooled, failed
        return out[0], out[1], out[2]

    for name, attack in attacks.items():
        # the attacks key each row's random stream by its position, so leaving out rows already
        # evaded changes no other row's result: the rows evaded are those of the unpruned suite
        attacked_by[name] = todo = detected & ~best.fooled if prune else detected
        fooled_by[name] = failed_by[name] = np.zeros(n, dtype=bool)
        if todo.any():
            mask = torch.as_tensor(todo)
            if isinstance(attack.space, CategoricalSpace):
                x_adv = attack.space.encode(attack(model, attack.space.rows(x), y, mask=mask).x_adv)
            else:
                x_adv = attack(model, x, y, mask=mask).x_adv.detach().cpu()
            _, fooled_by[name], failed_by[name] = judge(name, np.flatnonzero(todo), x_adv)
    refined = 0
    start = np.flatnonzero(detected & ~best.fooled & (best.attack != "none"))
    if refine and len(start):
        space = CategoricalSpace(schema)
        sub = torch.as_tensor(start)
        starts = space.rows(encode(schema, best.rows.iloc[start]), origin=x[sub])
        search = DiscreteSearch(space, candidates_per_step=16, loss="margin", max_steps=MAX_EDITS, seed=seed)
        result = search(model, starts, y[sub])
        x_adv = x.clone()
        x_adv[sub] = space.encode(result.x_adv)
        taken, fooled, _ = judge("refine", start, x_adv)
        refined = int((taken & fooled).sum())
        attacked_by["refine"] = np.isin(np.arange(n), start)
    rows = best.rows.astype({c.name: original[c.name].dtype for c in schema.columns})
    table = pd.DataFrame({
        "detected_clean": detected, "p_fraud_clean": p_clean, "p_fraud_adversarial": best.p, "fooled": best.fooled,
        "valid": schema.validate(rows, original).to_numpy(), "repair_failed": best.failed, "attack": best.attack,
        "cost": schema.cost(rows, original).to_numpy(), "changed": describe_changes(schema, rows, original),
    }, index=original.index)
    return WorstCase(rows, table, fooled_by, failed_by, refined, attacked_by, prune)


# ----------------------------------------------------------------------------- training against the joint attack
class SearchTraining(Method):
    """Adversarial training whose inner maximisation is PGD over the schema space, then the categorical
    search started from each PGD point (costs counted from the clean row): the pair that
    :func:`worst_case` found strongest, for data where category changes carry the attack.

    Pass it to :class:`robustkit.AdversarialTrainer` with a :class:`SchemaSpace` (or
    :class:`SparseSchemaSpace`); budget warm-up applies to both parts.

    Args:
        steps: PGD steps.
        candidates: edits per example the search checks exactly in each round.
        max_edits: most rounds of the search (one adopted edit each).

    Example:
        >>> import robustkit as rk
        >>> from domains.tabular import TabularDomain
        >>> domain = TabularDomain()
        >>> options = domain.parse_options({"n_rows": 400, "fraud_rate": 0.2})
        >>> data = domain.load_data("synthetic", seed=0, options=options)
        >>> model = domain.build_model(domain.model_spec(data, options))
        >>> trainer = rk.AdversarialTrainer(model, domain.space(3.0, data), method=SearchTraining(steps=2),
        ...                                 attackable=lambda x, y: y == 1, progress=False)
        >>> list(trainer.fit(domain.loader(data.train, 128, shuffle=True), epochs=1)["epoch"])
        [1]
    """

    name = "pgd+search"

    def __init__(self, steps: int = 10, candidates: int = 8, max_edits: int = 8) -> None:
        if steps < 1 or candidates < 1 or max_edits < 1:
            raise ConfigError("SearchTraining needs steps, candidates and max_edits >= 1")
        self.steps, self.candidates, self.max_edits = int(steps), int(candidates), int(max_edits)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "steps": self.steps, "candidates": self.candidates, "max_edits": self.max_edits}

    def loss(self, batch: Batch) -> Loss:
        space = batch.space
        if not isinstance(space, SchemaSpace):
            raise ConfigError(f"SearchTraining needs a SchemaSpace, got {type(space).__name__}")
        x_adv = PGD(space, steps=self.steps, seed=batch.seed, early_stop=False)(
            batch.model, batch.x, batch.y, mask=batch.attackable, ids=batch.ids).x_adv
        idx = batch.attackable.nonzero().squeeze(1)
        if len(idx) and space.budget > 0:
            cat = CategoricalSpace(space.schema, space.budget)
            x, pgd = batch.x[idx].detach().cpu(), x_adv[idx].detach().cpu()
            original = cat.frame(cat.rows(x))
            rows, _, _ = repair_rows(space.schema.with_budget(space.budget), pgd, x, original)
            starts = cat.rows(encode(space.schema, rows), origin=x)
            search = DiscreteSearch(cat, candidates_per_step=self.candidates, max_steps=self.max_edits,
                                    loss="margin", early_stop=False, seed=batch.seed)
            found = search(batch.model, starts, batch.y[idx])
            x_adv = x_adv.clone()
            x_adv[idx] = cat.encode(found.x_adv, x_adv.device).to(x_adv.dtype)
        return batch.criterion(batch.forward(x_adv), batch.y)
