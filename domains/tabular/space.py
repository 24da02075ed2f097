"""The attack variable of a schema, its perturbation space, and the way back to valid DataFrame rows.

The attack variable of a row is one float per numeric column (in the column's own units) followed
by one simplex block per categorical column (one weight per category; a real row is one-hot).
:class:`SchemaSpace` is the schema's threat model as a continuous space: bounds, directions,
immutables and simplices, with the cost budget measured by a **relaxed cost** that is never below
the cost of the row the model actually scores (integers rounded half up, categoricals at their
argmax; see :class:`~domains.tabular.model.SchemaEncoder`):

- continuous column: ``cost x |change|``;
- integer / binary column: ``cost x |round(change)|``;
- categorical column: ``cost x min(1, L1 distance of the weights from the original one-hot)``
  (the argmax moves off the original category only when that distance reaches 1).

Relations between numeric columns (``a <= b``, ``total = x + y``) are enforced by alternating
projections onto each relation (moving mutable columns only) and the box, then by shrinking the
change towards the original row until every inequality holds exactly (the original satisfies them,
and the feasible set is convex); a row whose equality cannot be met keeps its original values.

So every point :meth:`SchemaSpace.project` returns decodes (:func:`decode`) to a row that passes
``schema.validate``, except where rounding an integer column breaks a relation; :func:`repair`
checks every row and keeps the original one where a check fails (``repair_failed``).

Example:
    >>> import pandas as pd, torch
    >>> from domains.tabular.schema import Column, Schema
    >>> schema = Schema([Column("amount", "continuous", mutable=True, lower=0, upper=100, cost=0.1),
    ...                  Column("shop", "categorical", mutable=True, categories=["a", "b"], cost=1.0)], budget=1.5)
    >>> df = pd.DataFrame({"amount": [50.0], "shop": ["a"]})
    >>> x = encode(schema, df)
    >>> x.tolist()
    [[50.0, 1.0, 0.0]]
    >>> space = SchemaSpace(schema)
    >>> x_adv = space.project(x + torch.tensor([[-30.0, -1.0, 1.0]]), x)
    >>> round(float(space.norm(x_adv - x)[0]), 4)
    1.5
    >>> rows, info = repair(schema, x_adv, x, df)
    >>> bool(schema.validate(rows, df)[0]), info["repair_failed"].tolist()
    (True, [False])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from domains.tabular.schema import RTOL, Schema
from robustkit import _random
from robustkit.spaces import ContinuousSpace

__all__ = ["Layout", "SchemaSpace", "decode", "encode", "layout", "repair", "repair_rows"]

#: share of the budget projection aims for, so float32 rounding never pushes a row over budget
SAFETY = 1.0 - 1e-5
#: bisection steps of the budget projection (the change is kept to within 2^-20 of the boundary)
BISECTIONS = 20
#: alternating-projection sweeps over the relations and the box
RELATION_SWEEPS = 50


@dataclass
class Layout:
    """Where each column lives in the attack variable."""

    width: int
    numeric: list[int]  # positions of numeric columns
    blocks: list[tuple[int, int]]  # (start, size) of each categorical block
    numeric_columns: list[str]
    block_columns: list[str]


def layout(schema: Schema) -> Layout:
    pos, numeric, blocks, ncols, bcols = 0, [], [], [], []
    for c in schema.columns:
        if c.numeric:
            numeric.append(pos)
            ncols.append(c.name)
            pos += 1
        else:
            size = len(c.categories or [])
            blocks.append((pos, size))
            bcols.append(c.name)
            pos += size
    return Layout(pos, numeric, blocks, ncols, bcols)


def encode(schema: Schema, df: pd.DataFrame) -> torch.Tensor:
    """The attack variable of each row of ``df`` (float32, shape (N, width)); ``df`` is checked first."""
    Schema(schema.columns, schema.budget).check_frame(df[[n for n in schema.names if n in df.columns]]
                                                      if set(schema.names) <= set(df.columns) else df)
    parts = []
    for c in schema.columns:
        if c.numeric:
            parts.append(df[c.name].to_numpy(dtype=np.float64)[:, None])
        else:
            cats = c.categories or []
            codes = pd.Categorical(df[c.name].astype(str), categories=cats).codes
            parts.append(np.eye(len(cats))[codes])
    return torch.as_tensor(np.concatenate(parts, axis=1), dtype=torch.float32)


def _round_half_up(t: torch.Tensor) -> torch.Tensor:
    return torch.floor(t + 0.5)


def decode(schema: Schema, x: torch.Tensor, reference: pd.DataFrame | None = None,
           x_reference: torch.Tensor | None = None) -> pd.DataFrame:
    """Rows in the user's columns: integers rounded half up, categoricals at their argmax.

    With ``reference`` (the original rows) and ``x_reference`` (their encoding), numeric cells the
    attack did not move keep their original value exactly (float32 would round them).
    """
    x = x.detach().cpu().double()
    lay = layout(schema)
    out: dict[str, object] = {}
    i_num = i_blk = 0
    for c in schema.columns:
        if c.numeric:
            j = lay.numeric[i_num]
            i_num += 1
            v = x[:, j]
            if c.discrete:
                v = _round_half_up(v)
            values = v.numpy()
            if reference is not None and x_reference is not None:
                same = (x[:, j] == x_reference.detach().cpu().double()[:, j]).numpy()
                values = np.where(same, reference[c.name].to_numpy(dtype=np.float64), values)
            out[c.name] = values.astype(np.int64) if c.discrete else values
        else:
            start, size = lay.blocks[i_blk]
            i_blk += 1
            codes = x[:, start:start + size].argmax(dim=1).numpy()
            out[c.name] = np.asarray(c.categories, dtype=object)[codes]
    index = reference.index if reference is not None else None
    return pd.DataFrame(out, index=index)


def repair_rows(schema: Schema, x_adv: torch.Tensor, x: torch.Tensor, original: pd.DataFrame,
                steps: int = 20) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Rows that pass ``schema.validate``: each decoded point, or where it fails a check (rounding an
    integer column can break a relation) the longest shrink ``x + t (x_adv - x)`` (``t`` = 1 - 1/steps,
    ..., 1/steps) that passes, or else the original row.

    Returns the rows, ``failed`` (kept the original) and ``shrunk`` (took a shorter change) per row.

    Example:
        >>> import pandas as pd
        >>> from domains.tabular.schema import Column, Schema
        >>> schema = Schema([Column("amount", mutable=True, lower=0, upper=1000, cost=0.001),
        ...                  Column("items", "integer", mutable=True, lower=1, upper=9, cost=0.1)],
        ...                 budget=1.0, relations=["amount <= 250 * items"])
        >>> df = pd.DataFrame({"amount": [700.0], "items": [3]})
        >>> x = encode(schema, df)
        >>> rows, failed, shrunk = repair_rows(schema, torch.tensor([[590.0, 2.4]]), x, df)
        >>> rows.values.tolist(), failed.tolist(), shrunk.tolist()   # items 2.4 rounds to 2: 590 > 500
        ([[612.0, 3.0]], [False], [True])
    """
    rows = decode(schema, x_adv, original, x)
    failed = ~schema.validate(rows, original).to_numpy()
    shrunk = np.zeros(len(rows), dtype=bool)
    for t in np.linspace(1.0, 0.0, steps + 1)[1:-1]:
        if not failed.any():
            break
        sub = np.flatnonzero(failed)
        at = torch.as_tensor(sub)
        x_t = x[at] + float(t) * (x_adv[at] - x[at])
        tried = decode(schema, x_t, original.iloc[sub], x[at])
        ok = schema.validate(tried, original.iloc[sub]).to_numpy()
        if ok.any():
            rows.iloc[sub[ok]] = tried[ok].to_numpy()
            failed[sub[ok]], shrunk[sub[ok]] = False, True
    if failed.any():
        rows.loc[failed, :] = original.loc[failed, schema.names].to_numpy()
    rows = rows.astype({c.name: original[c.name].dtype for c in schema.columns})
    return rows, failed, shrunk


def repair(schema: Schema, x_adv: torch.Tensor, x: torch.Tensor,
           original: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Adversarial rows that all pass ``schema.validate``, and per row ``cost``, ``changed``,
    ``repair_failed`` (kept the original row) and ``shrunk`` (took a shorter change, see
    :func:`repair_rows`; whether it still evades needs a new look at the model).
    """
    rows, failed, shrunk = repair_rows(schema, x_adv, x, original)
    cost = schema.cost(rows, original)
    changed = [
        "; ".join(f"{c.name}: {original.iloc[i][c.name]} -> {rows.iloc[i][c.name]}" for c in schema.columns
                  if str(rows.iloc[i][c.name]) != str(original.iloc[i][c.name]))
        for i in range(len(rows))
    ]
    info = pd.DataFrame({"cost": cost.to_numpy(), "changed": changed, "repair_failed": failed, "shrunk": shrunk},
                        index=original.index)
    return rows, info


class SchemaSpace(ContinuousSpace):
    """A schema's threat model over the attack variable: the relaxed-cost ball of radius ``budget``.

    Args:
        schema: the columns and their rules.
        budget: the cost budget (default: the schema's).
    """

    name = "schema-cost"

    def __init__(self, schema: Schema, budget: float | None = None, atol: float = 1e-4) -> None:
        lay = layout(schema)
        low = torch.zeros(lay.width, dtype=torch.float64)
        high = torch.ones(lay.width, dtype=torch.float64)
        mask = torch.zeros(lay.width, dtype=torch.bool)
        weight = torch.ones(lay.width, dtype=torch.float64)
        integer = torch.zeros(lay.width, dtype=torch.bool)
        increase = torch.zeros(lay.width, dtype=torch.bool)
        decrease = torch.zeros(lay.width, dtype=torch.bool)
        numeric = torch.zeros(lay.width, dtype=torch.bool)
        blocks: list[tuple[int, int, float]] = []
        i_num = i_blk = 0
        for c in schema.columns:
            if c.numeric:
                j = lay.numeric[i_num]
                i_num += 1
                low[j] = -torch.inf if c.lower is None else c.lower
                high[j] = torch.inf if c.upper is None else c.upper
                integer[j] = c.discrete
                increase[j] = c.direction == "increase"
                decrease[j] = c.direction == "decrease"
                numeric[j] = True
                weight[j] = c.cost
                mask[j] = c.mutable
            else:
                start, size = lay.blocks[i_blk]
                i_blk += 1
                mask[start:start + size] = c.mutable
                weight[start:start + size] = c.cost
                if c.mutable:
                    blocks.append((start, size, c.cost))
        super().__init__(schema.budget if budget is None else budget, bounds=(low, high), mask=mask, atol=atol)
        self.schema = schema
        self.layout = lay
        self.weight, self.integer, self.numeric = weight, integer, numeric
        self.increase, self.decrease = increase, decrease
        self.blocks = blocks
        position = {name: lay.numeric[i] for i, name in enumerate(lay.numeric_columns)}
        self.rel_a = torch.zeros(len(schema.relations), lay.width, dtype=torch.float64)
        for i, r in enumerate(schema.relations):
            for name, coef in r.coefficients.items():
                self.rel_a[i, position[name]] = coef
        self.rel_b = torch.tensor([r.constant for r in schema.relations], dtype=torch.float64)
        self.rel_eq = torch.tensor([r.op == "=" for r in schema.relations], dtype=torch.bool)

    def __repr__(self) -> str:
        return f"SchemaSpace(budget={self.eps:g}, columns={len(self.schema.columns)})"

    # ----------------------------------------------------------------- cost
    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        """The relaxed cost of each row's change (>= the cost of the row the model scores)."""
        w = self._placed(self.weight, delta)
        num = self._placed(self.numeric, delta)
        moved = torch.where(self._placed(self.integer, delta), _round_half_up(delta), delta)
        cost = (w * moved.abs() * num).sum(dim=1)
        for start, size, c in self.blocks:
            cost = cost + c * delta[:, start:start + size].abs().sum(dim=1).clamp(max=1.0)
        return cost

    # ----------------------------------------------------------------- projection
    def _feasible_box(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self._bounds_like(x)
        low = torch.where(self._placed(self.increase, x), torch.maximum(low, x), low)
        high = torch.where(self._placed(self.decrease, x), torch.minimum(high, x), high)
        return low, high

    @staticmethod
    def _simplex(v: torch.Tensor) -> torch.Tensor:
        """Euclidean projection of each row onto the probability simplex (sort-based)."""
        u, _ = torch.sort(v, dim=1, descending=True)
        css = u.cumsum(dim=1) - 1.0
        k = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
        rho = ((u - css / k) > 0).sum(dim=1, keepdim=True).clamp(min=1)
        theta = css.gather(1, rho - 1) / rho.to(v.dtype)
        return (v - theta).clamp(min=0.0)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Clip to bounds, directions and immutables, put categoricals on their simplex, then scale
        the change down (per row, by bisection on the relaxed cost) until it fits the budget."""
        mask = self._placed(self.mask, x) if self.mask is not None else torch.ones_like(x, dtype=torch.bool)
        z = torch.where(mask, x_adv, x)
        low, high = self._feasible_box(x)
        num = self._placed(self.numeric, x)
        z = torch.where(num, torch.minimum(torch.maximum(z, low), high), z)
        if self.blocks:
            z = z.clone()
            for start, size, _ in self.blocks:
                z[:, start:start + size] = self._simplex(z[:, start:start + size])
        if len(self.rel_b):
            z = self._relations(z, x, low, high, mask & num)
        delta = z - x
        limit = self.eps * SAFETY
        fits = self.norm(delta) <= limit
        if bool(fits.all()):
            return x + delta
        over = (~fits).nonzero().squeeze(1)  # bisect only the rows over budget (the cost grows with the scale)
        xs, ds = x[over], delta[over]
        lo = torch.zeros(len(over), 1, dtype=x.dtype, device=x.device)
        hi = torch.ones_like(lo)
        for _ in range(BISECTIONS):
            mid = (lo + hi) / 2
            ok = (self.norm((xs + mid * ds) - xs) <= limit).unsqueeze(1)  # as stored: float rounding
            lo = torch.where(ok, mid, lo)
            hi = torch.where(ok, hi, mid)
        scale = torch.ones(len(x), 1, dtype=x.dtype, device=x.device)
        scale[over] = lo
        return x + scale * delta

    def _slack(self, x: torch.Tensor, rtol: float) -> torch.Tensor:
        """Per row and relation, the rounding slack ``rtol x (1 + sum |coef x value| + |constant|)``."""
        a = self._placed(self.rel_a, x)
        return rtol * (1 + x.abs() @ a.abs().T + self._placed(self.rel_b, x).abs())

    def _relations(self, z: torch.Tensor, x: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                   movable: torch.Tensor) -> torch.Tensor:
        """Move ``z`` (inside the box) onto the relations, keeping the box; rows that cannot be fixed
        shrink towards ``x`` (inequalities) or go back to ``x`` (equalities). Works in float64 and
        aims 10x inside the tolerance of ``Schema.validate``."""
        dtype = z.dtype
        z, x, low, high = z.double(), x.double(), low.double(), high.double()
        a, b, eq = self._placed(self.rel_a, z), self._placed(self.rel_b, z), self._placed(self.rel_eq, z)
        movable = movable.expand_as(z)
        a_free = a.unsqueeze(0) * movable.unsqueeze(1)  # (N, R, width): only mutable numeric columns move
        length = (a_free * a_free).sum(dim=2)  # (N, R)
        slack = self._slack(x, RTOL / 10)
        for _ in range(RELATION_SWEEPS):
            for i in range(len(b)):
                r = z @ a[i] - b[i]
                r = r if bool(eq[i]) else r.clamp(min=0.0)
                step = torch.where(length[:, i] > 0, r / length[:, i].clamp_min(1e-30), torch.zeros_like(r))
                z = z - step.unsqueeze(1) * a_free[:, i]
            z = torch.where(movable, torch.minimum(torch.maximum(z, low), high), z)
            r = z @ a.T - b
            if bool((torch.where(eq, r.abs(), r) <= slack).all()):
                break
        d = z - x
        ad, r0 = d @ a.T, x @ a.T - b  # (N, R)
        room = (slack - r0).clamp(min=0.0)
        limit = torch.where(~eq & (ad > 0), room / ad.clamp_min(1e-30), torch.ones_like(ad))
        t = limit.clamp(0.0, 1.0).amin(dim=1)
        stuck = (eq & ((r0 + ad).abs() > slack)).any(dim=1)
        t = torch.where(stuck, torch.zeros_like(t), t)
        return (x + t.unsqueeze(1) * d).to(dtype)

    # ----------------------------------------------------------------- steps and random points
    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Ascent direction ``grad / cost^2`` (categorical blocks centred), scaled to relaxed cost 1."""
        w = self._placed(self.weight, grad)
        d = grad / (w * w)
        if self.blocks:
            d = d.clone()
            for start, size, _ in self.blocks:
                block = d[:, start:start + size]
                d[:, start:start + size] = block - block.mean(dim=1, keepdim=True)
        return d / self._linear_cost(d).clamp_min(1e-12).unsqueeze(1)

    def _linear_cost(self, d: torch.Tensor) -> torch.Tensor:
        return (self._placed(self.weight, d) * d.abs()).sum(dim=1)

    def _sphere_sample(
        self, shape: tuple[int, ...], seed: int, ids: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        g = self._apply_mask(_random.normal(seed, ids, shape, dtype))
        g = g / self._placed(self.weight, g)
        return g / self._linear_cost(g).clamp_min(1e-12).unsqueeze(1) * self.eps * 2.0

    def _ball_sample(self, shape: tuple[int, ...], seed: int, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        direction = self._sphere_sample(shape, seed, ids, dtype) / 2.0
        u = _random.uniform(_random.derive(seed, 1), ids, (1,), dtype)
        return direction * u

    def _project_delta(self, delta: torch.Tensor) -> torch.Tensor:  # not used: project() is overridden
        return delta

    def covering_budget(self, x: torch.Tensor) -> float | None:
        """None: immutable columns keep some rows out of reach at any budget."""
        return None

    # ----------------------------------------------------------------- the validity oracle
    def contains(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x_adv.shape != x.shape:
            return torch.zeros(len(x), dtype=torch.bool, device=x.device)
        ok = torch.isfinite(x_adv).all(dim=1)
        delta = x_adv - x
        if self.mask is not None:
            ok &= ((delta.abs() <= self.atol) | self._placed(self.mask, x)).all(dim=1)
        low, high = self._feasible_box(x)
        tol = self.atol * (1 + x.abs())
        ok &= ((x_adv >= low - tol) & (x_adv <= high + tol)).all(dim=1)
        for start, size, _ in self.blocks:
            block = x_adv[:, start:start + size]
            ok &= (block >= -self.atol).all(dim=1) & ((block.sum(dim=1) - 1).abs() <= self.atol * size)
        if len(self.rel_b):
            r = x_adv @ self._placed(self.rel_a, x).T - self._placed(self.rel_b, x)
            ok &= (torch.where(self._placed(self.rel_eq, x), r.abs(), r) <= self._slack(x, self.atol)).all(dim=1)
        ok &= self.norm(delta) <= self.eps * (1 + 1e-6) + self.atol
        return ok
