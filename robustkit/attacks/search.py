"""A gradient-guided greedy search over any discrete space (HotFlip-style).

Each round takes one batched gradient of the loss w.r.t. the encoded inputs of the examples still
being attacked, ranks every allowed edit of each example by its first-order estimate, evaluates the
top few of every example exactly in one batched forward pass, and adopts each example's best edit
while it succeeds or raises the loss.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from robustkit.attacks.base import Attack, Best, Problem, integer_at_least
from robustkit.errors import ConfigError, DataError
from robustkit.losses import LossFn
from robustkit.spaces import DiscreteSpace, Edit, PerturbationSpace

__all__ = ["DiscreteSearch"]


class DiscreteSearch(Attack):
    """Greedy edits ranked by the gradient on the encoded input, checked exactly before adoption.

    The model takes ``space.encode(objects)``; inputs and ``x_adv`` are lists of the space's objects.

    Args:
        space: a :class:`~robustkit.spaces.DiscreteSpace`.
        candidates_per_step: edits per example evaluated exactly each round (the best-scored ones).
        max_steps: most rounds (one adopted edit each); None: until no edit is left or none helps.
        loss, targeted, early_stop: see :class:`~robustkit.attacks.base.Attack`.
        seed: accepted for a uniform interface; the search itself is deterministic.

    Example:
        >>> import torch, robustkit as rk
        >>> class Flips(rk.DiscreteSpace):  # tuples of bits; an edit flips a bit not flipped yet
        ...     def encode(self, xs, device="cpu"):
        ...         return torch.tensor(xs, dtype=torch.float32, device=device)
        ...     def flipped(self, x, original):
        ...         return sum(a != b for a, b in zip(x, original))
        ...     def candidates(self, x, original):
        ...         if self.flipped(x, original) + 1 > self.budget:
        ...             return []
        ...         return [rk.Edit(i, 1 - v) for i, v in enumerate(x) if v == original[i]]
        ...     def apply(self, x, edit):
        ...         return x[: edit.position] + (edit.value,) + x[edit.position + 1 :]
        ...     def contains(self, x_adv, x):
        ...         return torch.tensor([self.flipped(u, v) <= self.budget for u, v in zip(x_adv, x)])
        >>> model = torch.nn.Linear(3, 1)  # one logit: class 1 when 2 a + b / 2 - 1.5 c > 1.5
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[2.0, 0.5, -1.5]])), model.bias.fill_(-1.5)
        >>> result = rk.DiscreteSearch(Flips(budget=2))(model, [(0, 0, 1)], [0])
        >>> result.x_adv, bool(result.success[0])
        ([(1, 0, 0)], True)
    """

    name = "search"

    def __init__(
        self,
        space: PerturbationSpace,
        *,
        candidates_per_step: int = 8,
        max_steps: int | None = None,
        loss: str | LossFn = "ce",
        targeted: bool = False,
        seed: int = 0,
        early_stop: bool = True,
    ) -> None:
        super().__init__(space, loss=loss, targeted=targeted, seed=seed, early_stop=early_stop)
        if not isinstance(space, DiscreteSpace):
            raise ConfigError(
                f"{type(self).__name__} needs a DiscreteSpace (edits of objects), "
                f"got {type(space).__name__}: use rk.PGD for continuous spaces"
            )
        candidates_per_step = integer_at_least("candidates_per_step", candidates_per_step)
        if max_steps is not None:
            max_steps = integer_at_least("max_steps (None: no round limit)", max_steps)
        self.candidates_per_step = int(candidates_per_step)
        self.max_steps = None if max_steps is None else int(max_steps)

    @property
    def dspace(self) -> DiscreteSpace[Any]:
        assert isinstance(self.space, DiscreteSpace)
        return self.space

    def config(self) -> dict[str, Any]:
        return {
            "candidates_per_step": self.candidates_per_step,
            "max_steps": self.max_steps,
            **super().config(),
        }

    # ----------------------------------------------------------------- the search
    def _encode(self, objs: Sequence[Any], device: torch.device) -> torch.Tensor:
        enc = self.dspace.encode(objs, device)
        if not isinstance(enc, torch.Tensor) or not torch.is_floating_point(enc) or len(enc) != len(objs):
            got = (
                f"dtype {enc.dtype}, {len(enc)} rows" if isinstance(enc, torch.Tensor) else type(enc).__name__
            )
            raise ConfigError(
                f"{type(self.space).__name__}.encode must return a float tensor with one row per object "
                f"({len(objs)}), got {got}: return e.g. one-hot or embedding floats"
            )
        return enc.to(device)

    def _run(self, problem: Problem) -> Best:
        space, device = self.dspace, problem.y.device
        original: list[Any] = list(problem.x)
        current = list(original)
        best = Best(original, device)
        scored = torch.zeros(len(problem), dtype=torch.bool, device=device)
        active = torch.arange(len(problem), device=device)
        rounds = 0
        while len(active) and (self.max_steps is None or rounds < self.max_steps):
            rounds += 1
            edits = [space.candidates(current[i], original[i]) for i in active.tolist()]
            has = [j for j, e in enumerate(edits) if e]
            if not has:
                break
            active, edits = active[has], [edits[j] for j in has]
            pos = active.tolist()
            logits, loss, grad = problem.loss_grad(self._encode([current[i] for i in pos], device), active)
            success = problem.success(logits, active)
            best.loss[active], best.success[active] = loss.to(best.loss.dtype), success
            scored[active] = True
            if self.early_stop:
                keep = (~success).nonzero().squeeze(1)
                if len(keep) < len(active):
                    kept = keep.tolist()
                    active, loss, success, grad = active[keep], loss[keep], success[keep], grad[keep]
                    edits = [edits[j] for j in kept]
                if len(active) == 0:
                    break
            active = self._step(problem, active, current, loss, success, grad, edits, best)
        # examples that never had an edit to try (budget 0) still need the loss of the clean input
        todo = (~scored).nonzero().squeeze(1)
        if len(todo):
            logits, loss = problem.evaluate(self._encode([current[i] for i in todo.tolist()], device), todo)
            best.loss[todo], best.success[todo] = loss.to(best.loss.dtype), problem.success(logits, todo)
        best.x = current
        valid = torch.as_tensor(space.contains(current, original)).bool()
        if not bool(valid.all()):
            bad = int((~valid).nonzero()[0, 0])
            raise ConfigError(
                f"{type(space).__name__}.contains rejects the search's result {current[bad]!r} for input "
                f"{original[bad]!r}: candidates() must offer only edits that keep an object within the space"
            )
        return best

    def _step(
        self,
        problem: Problem,
        active: torch.Tensor,
        current: list[Any],
        loss: torch.Tensor,
        success: torch.Tensor,
        grad: torch.Tensor,
        edits: list[list[Edit]],
        best: Best,
    ) -> torch.Tensor:
        """Try the best-scored edits of every active example in one batch; adopt improvements.

        Returns the examples to continue with: those that adopted an edit (and did not just succeed,
        under early stopping).
        """
        space, device = self.dspace, active.device
        proposals: list[Any] = []
        counts: list[int] = []
        for j, i in enumerate(active.tolist()):
            scores = torch.as_tensor(space.scores(current[i], grad[j], edits[j]))
            if scores.shape != (len(edits[j]),):
                raise ConfigError(
                    f"{type(space).__name__}.scores returned shape {tuple(scores.shape)} for {len(edits[j])} "
                    "edits: return one score per edit"
                )
            order = torch.sort(scores.float().cpu(), descending=True, stable=True).indices
            top = order[: self.candidates_per_step].tolist()
            proposals.extend(space.apply(current[i], edits[j][t]) for t in top)
            counts.append(len(top))
        owner = torch.repeat_interleave(
            torch.arange(len(active), device=device), torch.tensor(counts, device=device)
        )
        c_logits, c_loss = problem.evaluate(self._encode(proposals, device), active[owner])
        c_success = problem.success(c_logits, active[owner])
        # each example's best proposal: a success beats a failure, then the higher loss (first on ties)
        chosen = []
        start = 0
        for count in counts:
            s, ls = c_success[start : start + count], c_loss[start : start + count]
            if bool(s.any()):
                ls = torch.where(s, ls, torch.full_like(ls, float("-inf")))
            chosen.append(start + int(ls.argmax()))
            start += count
        pick = torch.tensor(chosen, device=device)
        new_s, new_l = c_success[pick], c_loss[pick]
        better = (new_s & ~success) | ((new_s == success) & (new_l > loss))
        for j in better.nonzero().squeeze(1).tolist():
            current[int(active[j])] = proposals[chosen[j]]
        moved = active[better]
        best.loss[moved] = new_l[better].to(best.loss.dtype)
        best.success[moved] = new_s[better]
        go_on = better & ~new_s if self.early_stop else better
        return active[go_on]

    def _confirm(self, problem: Problem, best: Best) -> None:
        """Re-check the claimed successes in one batched forward pass on the encoded returned objects."""
        idx = best.success.nonzero().squeeze(1)
        if len(idx) == 0:
            return
        logits, loss = problem.evaluate(self._encode(self._take(best.x, idx), idx.device), idx)
        best.success[idx] = problem.success(logits, idx)
        best.loss[idx] = loss.to(best.loss.dtype)

    # ----------------------------------------------------------------- input handling (objects)
    def _prepare_inputs(self, x: Any, n: int, device: torch.device) -> Any:
        if isinstance(x, torch.Tensor | str | bytes | Mapping) or not isinstance(x, Iterable):
            raise DataError(
                f"inputs must be a list of objects for {type(self.space).__name__}, got {type(x).__name__}: "
                "pass the objects themselves; the model receives space.encode(objects)"
            )
        xs = list(x)
        if len(xs) != n:
            raise DataError(f"got {len(xs)} inputs but {n} labels: pass one label per input")
        if n:
            valid = torch.as_tensor(self.space.contains(xs, xs)).bool()
            if not bool(valid.all()):
                bad = int((~valid).nonzero()[0, 0])
                raise DataError(
                    f"input {bad} ({xs[bad]!r}) is not a valid object of {type(self.space).__name__} "
                    "(space.contains(x, x) is False): fix or drop it before attacking"
                )
        return xs

    def _take(self, x: Any, idx: torch.Tensor) -> Any:
        return [x[i] for i in idx.tolist()]

    def _copy(self, x: Any) -> Any:
        return list(x)

    def _merge(self, x: Any, idx: torch.Tensor, x_sub: Any) -> Any:
        out = list(x)
        for i, obj in zip(idx.tolist(), x_sub, strict=True):
            out[i] = obj
        return out
