"""A gradient-guided greedy search over any discrete space (HotFlip-style).

Each round takes one batched gradient of the loss w.r.t. the encoded inputs of the examples still
being attacked, ranks every allowed edit of each example by its first-order estimate, evaluates the
top few of every example exactly in one batched forward pass, and adopts each example's best edit
while it succeeds or raises the loss. With ``random_share`` some of the edits checked exactly each
round are drawn at random instead of by rank (random-greedy moves the first-order ranking would
never try); with ``restarts`` the examples still robust are searched again from the start, over
another random sample of the space's candidates (:meth:`~robustkit.DiscreteSpace.with_seed`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from robustkit import _random
from robustkit.attacks.base import Attack, Best, Problem, integer_at_least
from robustkit.errors import ConfigError, DataError
from robustkit.losses import LossFn
from robustkit.spaces import DiscreteSpace, Edit, PerturbationSpace

__all__ = ["DiscreteSearch", "QuerySearch"]


class _ObjectSearch(Attack):
    """What the searches over a :class:`~robustkit.spaces.DiscreteSpace` share: lists of objects as
    inputs, the encoding the model takes, and restarts over other samples of the space's candidates."""

    restarts = 1
    #: most candidate objects encoded and evaluated in one forward pass
    batch = 512

    def __init__(self, space: PerturbationSpace, *, restarts: int = 1, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        if not isinstance(space, DiscreteSpace):
            raise ConfigError(
                f"{type(self).__name__} needs a DiscreteSpace (edits of objects), "
                f"got {type(space).__name__}: use rk.PGD for continuous spaces"
            )
        self.restarts = integer_at_least("restarts", restarts)

    @property
    def dspace(self) -> DiscreteSpace[Any]:
        assert isinstance(self.space, DiscreteSpace)
        return self.space

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
        device = problem.y.device
        original: list[Any] = list(problem.x)
        best = Best(original, device)
        todo = torch.arange(len(problem), device=device)
        for restart in range(self.restarts):
            space = self.dspace if restart == 0 else self.dspace.with_seed(_random.derive(self.seed, restart))
            found, loss, success = self._search(problem, space, todo, restart)
            better = (success & ~best.success[todo]) | ((success == best.success[todo]) & (loss > best.loss[todo]))
            for j in better.nonzero().squeeze(1).tolist():
                best.x[int(todo[j])] = found[j]
            best.loss[todo] = torch.where(better, loss.to(best.loss.dtype), best.loss[todo])
            best.success[todo] = best.success[todo] | success
            todo = todo[~success]
            if len(todo) == 0:
                break
        return best

    def _search(
        self, problem: Problem, space: DiscreteSpace[Any], todo: torch.Tensor, restart: int
    ) -> tuple[list[Any], torch.Tensor, torch.Tensor]:
        """One search from the originals of examples ``todo``: their objects, losses and successes."""
        raise NotImplementedError

    def _losses(self, problem: Problem, space: DiscreteSpace[Any], objs: list[Any], owners: torch.Tensor) -> tuple[
            torch.Tensor, torch.Tensor]:
        """Loss and success of each object against the label of its owner (an example of ``problem``),
        ``batch`` objects per forward pass, in order of :meth:`~robustkit.DiscreteSpace.size` so that
        each batch pads to little more than its own objects."""
        device = problem.y.device
        order = sorted(range(len(objs)), key=lambda k: space.size(objs[k]))
        loss = torch.zeros(len(objs), device=device)
        win = torch.zeros(len(objs), dtype=torch.bool, device=device)
        for start in range(0, len(objs), self.batch):
            part = torch.tensor(order[start : start + self.batch], dtype=torch.long, device=device)
            logits, part_loss = problem.evaluate(self._encode([objs[k] for k in part.tolist()], device), owners[part])
            loss[part] = part_loss.to(loss.dtype)
            win[part] = problem.success(logits, owners[part])
        return loss, win

    def _check(self, space: DiscreteSpace[Any], current: list[Any], original: list[Any]) -> None:
        valid = torch.as_tensor(space.contains(current, original)).bool()
        if not bool(valid.all()):
            bad = int((~valid).nonzero()[0, 0])
            raise ConfigError(
                f"{type(space).__name__}.contains rejects the search's result {current[bad]!r} for input "
                f"{original[bad]!r}: candidates() must offer only edits that keep an object within the space"
            )

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


class DiscreteSearch(_ObjectSearch):
    """Greedy edits ranked by the gradient on the encoded input, checked exactly before adoption.

    The model takes ``space.encode(objects)``; inputs and ``x_adv`` are lists of the space's objects.

    Args:
        space: a :class:`~robustkit.spaces.DiscreteSpace`.
        candidates_per_step: edits per example evaluated exactly each round (the best-scored ones).
        max_steps: most rounds (one adopted edit each); None: until no edit is left or none helps.
        restarts: searches per example; each later one starts again from the original, only on the
            examples not broken yet, over the space's candidates for another seed.
        random_share: share of the ``candidates_per_step`` edits drawn at random from the ones not
            ranked best (0: all by rank).
        loss, targeted, early_stop: see :class:`~robustkit.attacks.base.Attack`.
        seed: the random stream of the restarts' candidates and the random moves (with neither, the
            search is deterministic).

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
        restarts: int = 1,
        random_share: float = 0.0,
        loss: str | LossFn = "ce",
        targeted: bool = False,
        seed: int = 0,
        early_stop: bool = True,
    ) -> None:
        super().__init__(space, restarts=restarts, loss=loss, targeted=targeted, seed=seed, early_stop=early_stop)
        candidates_per_step = integer_at_least("candidates_per_step", candidates_per_step)
        if max_steps is not None:
            max_steps = integer_at_least("max_steps (None: no round limit)", max_steps)
        if not 0 <= float(random_share) <= 1:
            raise ConfigError(f"random_share must lie in [0, 1] (a share of candidates_per_step), got {random_share!r}")
        self.candidates_per_step = int(candidates_per_step)
        self.max_steps = None if max_steps is None else int(max_steps)
        self.random_share = float(random_share)

    def config(self) -> dict[str, Any]:
        return {
            "candidates_per_step": self.candidates_per_step,
            "max_steps": self.max_steps,
            "restarts": self.restarts,
            "random_share": self.random_share,
            **super().config(),
        }

    # ----------------------------------------------------------------- the search
    def _search(
        self, problem: Problem, space: DiscreteSpace[Any], todo: torch.Tensor, restart: int
    ) -> tuple[list[Any], torch.Tensor, torch.Tensor]:
        """One greedy search from the originals of examples ``todo``: their objects, losses and successes."""
        device = problem.y.device
        original: list[Any] = [problem.x[i] for i in todo.tolist()]
        current = list(original)
        best = Best(original, device)
        scored = torch.zeros(len(todo), dtype=torch.bool, device=device)
        active = torch.arange(len(todo), device=device)
        rounds = 0
        while len(active) and (self.max_steps is None or rounds < self.max_steps):
            rounds += 1
            edits = [space.candidates(current[i], original[i]) for i in active.tolist()]
            has = [j for j, e in enumerate(edits) if e]
            if not has:
                break
            active, edits = active[has], [edits[j] for j in has]
            pos = active.tolist()
            logits, loss, grad = problem.loss_grad(self._encode([current[i] for i in pos], device), todo[active])
            success = problem.success(logits, todo[active])
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
            rngs = [random.Random(f"{self.seed}:{restart}:{rounds}:{int(problem.ids[int(todo[i])])}")
                    for i in active.tolist()]
            active = self._step(problem, space, todo, active, current, loss, success, grad, edits, best, rngs)
        # examples that never had an edit to try (budget 0) still need the loss of the clean input
        unscored = (~scored).nonzero().squeeze(1)
        if len(unscored):
            logits, loss = problem.evaluate(self._encode([current[i] for i in unscored.tolist()], device),
                                            todo[unscored])
            best.loss[unscored] = loss.to(best.loss.dtype)
            best.success[unscored] = problem.success(logits, todo[unscored])
        self._check(space, current, original)
        return current, best.loss, best.success

    def _step(
        self,
        problem: Problem,
        space: DiscreteSpace[Any],
        todo: torch.Tensor,
        active: torch.Tensor,
        current: list[Any],
        loss: torch.Tensor,
        success: torch.Tensor,
        grad: torch.Tensor,
        edits: list[list[Edit]],
        best: Best,
        rngs: list[random.Random],
    ) -> torch.Tensor:
        """Try the best-scored edits of every active example in one batch; adopt improvements.

        ``active`` holds positions into ``todo`` (the problem's examples of this search). Returns the
        examples to continue with: those that adopted an edit (and did not just succeed, under early stopping).
        """
        device = active.device
        proposals: list[Any] = []
        counts: list[int] = []
        n_random = round(self.random_share * self.candidates_per_step)
        for j, i in enumerate(active.tolist()):
            scores = torch.as_tensor(space.scores(current[i], grad[j], edits[j]))
            if scores.shape != (len(edits[j]),):
                raise ConfigError(
                    f"{type(space).__name__}.scores returned shape {tuple(scores.shape)} for {len(edits[j])} "
                    "edits: return one score per edit"
                )
            order = torch.sort(scores.float().cpu(), descending=True, stable=True).indices.tolist()
            ranked = self.candidates_per_step - n_random
            rest = order[ranked:]
            top = order[:ranked] + rngs[j].sample(rest, min(n_random, len(rest)))
            proposals.extend(space.apply(current[i], edits[j][t]) for t in top)
            counts.append(len(top))
        owner = torch.repeat_interleave(
            torch.arange(len(active), device=device), torch.tensor(counts, device=device)
        )
        c_loss, c_success = self._losses(problem, space, proposals, todo[active[owner]])
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

class QuerySearch(_ObjectSearch):
    """A black-box greedy search: ranks positions by their effect on the loss, then tries their edits.

    It needs no gradient, only the model's outputs (queries): each round it scores every position of an
    example (the space's :attr:`~robustkit.spaces.Edit.position`: a word, a gap) by the loss after
    ``probes`` random edits there, then evaluates up to ``queries_per_position`` edits at each of the
    ``positions_per_step`` best positions, and adopts the best edit seen while it succeeds or raises the
    loss. Edits are drawn with the attack's seed per example, so a result does not depend on batching.

    Args:
        space: a :class:`~robustkit.spaces.DiscreteSpace`.
        positions_per_step: positions whose edits are tried each round (the best-ranked ones).
        queries_per_position: most edits tried at one position each round (a random sample if more).
        probes: random edits per position that rank it.
        max_steps: most rounds (one adopted edit each); None: until no edit is left or none helps.
        restarts: searches per example, each later one on the examples not broken yet, over another
            sample of the space's candidates.
        batch: most candidate objects encoded and evaluated in one forward pass.
        loss, targeted, early_stop, seed: see :class:`~robustkit.attacks.base.Attack`.

    Example:
        >>> import torch, robustkit as rk
        >>> class Flips(rk.DiscreteSpace):  # tuples of bits; an edit flips a bit not flipped yet
        ...     def encode(self, xs, device="cpu"):
        ...         return torch.tensor(xs, dtype=torch.float32, device=device)
        ...     def candidates(self, x, original):
        ...         if sum(a != b for a, b in zip(x, original)) + 1 > self.budget:
        ...             return []
        ...         return [rk.Edit(i, 1 - v) for i, v in enumerate(x) if v == original[i]]
        ...     def apply(self, x, edit):
        ...         return x[: edit.position] + (edit.value,) + x[edit.position + 1 :]
        ...     def contains(self, x_adv, x):
        ...         return torch.tensor([sum(a != b for a, b in zip(u, v)) <= self.budget for u, v in zip(x_adv, x)])
        >>> model = torch.nn.Linear(3, 1)  # one logit: class 1 when 2 a + b / 2 - 1.5 c > 1.5
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[2.0, 0.5, -1.5]])), model.bias.fill_(-1.5)
        >>> result = rk.QuerySearch(Flips(budget=2))(model, [(0, 0, 1)], [0])
        >>> result.x_adv, bool(result.success[0]), result.backward_passes
        ([(1, 0, 0)], True, 0)
    """

    name = "query-search"

    def __init__(
        self,
        space: PerturbationSpace,
        *,
        positions_per_step: int = 4,
        queries_per_position: int = 32,
        probes: int = 2,
        max_steps: int | None = None,
        restarts: int = 1,
        batch: int = 512,
        loss: str | LossFn = "ce",
        targeted: bool = False,
        seed: int = 0,
        early_stop: bool = True,
    ) -> None:
        super().__init__(space, restarts=restarts, loss=loss, targeted=targeted, seed=seed, early_stop=early_stop)
        for label, value in (("positions_per_step", positions_per_step), ("queries_per_position", queries_per_position),
                             ("probes", probes), ("batch", batch)):
            integer_at_least(label, value)
        if max_steps is not None:
            integer_at_least("max_steps (None: no round limit)", max_steps)
        self.positions_per_step, self.queries_per_position = int(positions_per_step), int(queries_per_position)
        self.probes, self.batch = int(probes), int(batch)
        self.max_steps = None if max_steps is None else int(max_steps)

    def config(self) -> dict[str, Any]:
        return {
            "positions_per_step": self.positions_per_step,
            "queries_per_position": self.queries_per_position,
            "probes": self.probes,
            "max_steps": self.max_steps,
            "restarts": self.restarts,
            **super().config(),
        }

    def _search(
        self, problem: Problem, space: DiscreteSpace[Any], todo: torch.Tensor, restart: int
    ) -> tuple[list[Any], torch.Tensor, torch.Tensor]:
        device = problem.y.device
        original: list[Any] = [problem.x[i] for i in todo.tolist()]
        current = list(original)
        loss, success = self._losses(problem, space, current, todo)
        active = [i for i in range(len(todo)) if not (self.early_stop and bool(success[i]))]
        rounds = 0
        while active and (self.max_steps is None or rounds < self.max_steps):
            rounds += 1
            rngs = {i: random.Random(f"{self.seed}:{restart}:{rounds}:{int(problem.ids[int(todo[i])])}")
                    for i in active}
            groups: dict[int, dict[int, list[Edit]]] = {}
            for i in active:
                by_position: dict[int, list[Edit]] = {}
                for edit in space.candidates(current[i], original[i]):
                    by_position.setdefault(edit.position, []).append(edit)
                if by_position:
                    groups[i] = by_position
            active = list(groups)
            if not active:
                break
            # stage 1: rank every position of every example by the loss after a few random edits there
            probes: list[tuple[int, int, Edit]] = []
            for i in active:
                for position, edits in groups[i].items():
                    probes += [(i, position, e) for e in rngs[i].sample(edits, min(self.probes, len(edits)))]
            objs = [space.apply(current[i], e) for i, _, e in probes]
            p_loss, p_win = self._losses(problem, space, objs, todo[torch.tensor([i for i, _, _ in probes],
                                                                                  dtype=torch.long, device=device)])
            rank: dict[int, dict[int, float]] = {i: {} for i in active}
            for (i, position, _), value, won in zip(probes, p_loss.tolist(), p_win.tolist(), strict=True):
                score = math.inf if won else value
                rank[i][position] = max(rank[i].get(position, -math.inf), score)
            # stage 2: the edits at each example's best positions (the probes stay candidates too)
            owners = [i for i, _, _ in probes]
            for i in active:
                top = sorted(rank[i].items(), key=lambda item: -item[1])[: self.positions_per_step]
                for position, _ in top:
                    edits = groups[i][position]
                    owners += [i] * min(self.queries_per_position, len(edits))
                    objs += [space.apply(current[i], e)
                             for e in rngs[i].sample(edits, min(self.queries_per_position, len(edits)))]
            t_loss, t_win = self._losses(problem, space, objs[len(probes):],
                                         todo[torch.tensor(owners[len(probes):], dtype=torch.long, device=device)])
            all_loss, all_win = torch.cat([p_loss, t_loss]), torch.cat([p_win, t_win])
            # each example's best try: a success beats a failure, then the higher loss (Python numbers: one per try)
            keys = list(zip(all_win.tolist(), all_loss.tolist(), strict=True))
            best_of: dict[int, int] = {}
            for k, i in enumerate(owners):
                if i not in best_of or keys[k] > keys[best_of[i]]:
                    best_of[i] = k
            moving = []
            for i, k in best_of.items():
                won, value = keys[k]
                if (won and not bool(success[i])) or (won == bool(success[i]) and value > float(loss[i])):
                    current[i], loss[i], success[i] = objs[k], all_loss[k], all_win[k]
                    if not (self.early_stop and won):
                        moving.append(i)
            active = moving
        self._check(space, current, original)
        return current, loss, success
