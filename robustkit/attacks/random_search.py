"""A query-budgeted, gradient-free random search in the spirit of Square Attack (Andriushchenko et al. 2020).

The search starts on the boundary of the space and repeatedly proposes to redraw a random block of
coordinates from a fresh boundary point, keeping a proposal when it raises the loss. It needs only
the model's outputs, so it also checks that a defence does not merely hide gradients.

Example:
    >>> import torch, robustkit as rk
    >>> model = torch.nn.Linear(6, 3)
    >>> x, y = torch.rand(5, 6), torch.randint(0, 3, (5,))
    >>> space = rk.LinfBall(eps=0.05, bounds=(0.0, 1.0))
    >>> result = rk.RandomSearch(space, queries=50)(model, x, y)
    >>> bool(space.contains(result.x_adv, x).all()), result.backward_passes
    (True, 0)
"""

from __future__ import annotations

import math
from typing import Any

import torch

from robustkit import _random
from robustkit.attacks.base import Attack, Best, Problem, integer_at_least
from robustkit.errors import ConfigError
from robustkit.losses import LossFn
from robustkit.spaces import ContinuousSpace, PerturbationSpace

__all__ = ["RandomSearch"]

#: Shares of the query budget after which the block fraction halves (Square Attack's schedule).
_HALVINGS = (0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)


class RandomSearch(Attack):
    """Gradient-free search: redraw random blocks of coordinates from boundary points, keep improvements.

    Each example starts at a random boundary point (``space.vertex``). Every query proposes to
    replace one block of coordinates with those of a fresh boundary point, projects onto the space
    and keeps the proposal if the loss rises (or it succeeds). On inputs with 3+ dimensions per
    example (C, H, W) a block is a square window over the last two dimensions across all channels;
    on flat inputs it is a random subset of the movable features. The block covers a fraction ``p``
    of the window area (features), halved on Square Attack's schedule as the budget is spent.

    Args:
        space: a continuous space (``LinfBall``, ``L2Ball`` or a domain's own).
        queries: forward passes per example, the starting point included (the final re-check aside).
        p_init: initial fraction of the input redrawn per query, in (0, 1].
        loss: the loss to raise; the default margin is > 0 exactly when the example is misclassified.
        targeted, seed, early_stop: see :class:`~robustkit.attacks.base.Attack`.

    Example:
        >>> import torch, robustkit as rk
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 4), torch.nn.Flatten())  # images -> 2 logits
        >>> x, y = torch.rand(2, 3, 4, 4), torch.tensor([0, 1])
        >>> result = rk.RandomSearch(rk.LinfBall(eps=0.1, bounds=(0.0, 1.0)), queries=20)(net, x, y)
        >>> result.x_adv.shape, result.forward_passes <= 2 * 20 + 2
        (torch.Size([2, 3, 4, 4]), True)
    """

    name = "random_search"

    def __init__(
        self,
        space: PerturbationSpace,
        *,
        queries: int = 1000,
        p_init: float = 0.1,
        loss: str | LossFn = "margin",
        targeted: bool = False,
        seed: int = 0,
        early_stop: bool = True,
    ) -> None:
        super().__init__(space, loss=loss, targeted=targeted, seed=seed, early_stop=early_stop)
        if not isinstance(space, ContinuousSpace):
            raise ConfigError(
                f"{type(self).__name__} needs a continuous space (e.g. rk.LinfBall), got {type(space).__name__}"
            )
        queries = integer_at_least("queries", queries)
        if not 0.0 < float(p_init) <= 1.0:
            raise ConfigError(f"p_init must lie in (0, 1], got {p_init!r}: e.g. p_init=0.1 redraws 10% per query")
        self.queries = int(queries)
        self.p_init = float(p_init)

    @property
    def cspace(self) -> ContinuousSpace:
        assert isinstance(self.space, ContinuousSpace)
        return self.space

    def config(self) -> dict[str, Any]:
        return {"queries": self.queries, "p_init": self.p_init, **super().config()}

    def fraction(self, query: int) -> float:
        """The fraction of the input redrawn at query ``query`` (1-based; the start is query 0)."""
        spent = query / self.queries
        return self.p_init / 2 ** sum(spent > share for share in _HALVINGS)

    def _run(self, problem: Problem) -> Best:
        space, x = self.cspace, problem.x
        everyone = torch.arange(len(x), device=x.device)
        start = space.vertex(x, seed=_random.derive(self.seed, 0, 0), ids=problem.ids)
        best = Best(start, x.device)
        logits, loss = problem.evaluate(start, everyone)
        best.update(everyone, start, loss, problem.success(logits, everyone))
        active = everyone
        for query in range(1, self.queries):
            if self.early_stop:
                active = active[~best.success[active]]
                if len(active) == 0:
                    break
            x0, ids = x[active], problem.ids[active]
            block = self._block(x0, ids, query)
            fresh = space.vertex(x0, seed=_random.derive(self.seed, query, 0), ids=ids)
            proposal = space.project(torch.where(block, fresh, best.x[active]), x0)
            logits, loss = problem.evaluate(proposal, active)
            best.update(active, proposal, loss, problem.success(logits, active))
        return best

    def _block(self, x0: torch.Tensor, ids: torch.Tensor, query: int) -> torch.Tensor:
        """Bool tensor broadcastable to ``x0``: the coordinates each example redraws at ``query``."""
        p = self.fraction(query)
        seed = _random.derive(self.seed, query, 1)
        shape = tuple(x0.shape[1:])
        n = len(x0)
        if len(shape) >= 3:
            h, w = shape[-2], shape[-1]
            side = min(max(round(math.sqrt(p * h * w)), 1), h, w)
            corner = _random.uniform(seed, ids, (2,), torch.float32)
            top = (corner[:, 0] * (h - side + 1)).long().clamp_max(h - side)
            left = (corner[:, 1] * (w - side + 1)).long().clamp_max(w - side)
            rows = torch.arange(h, device=x0.device)
            cols = torch.arange(w, device=x0.device)
            in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
            in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
            window = in_rows[:, :, None] & in_cols[:, None, :]
            return window.view(n, *([1] * (len(shape) - 2)), h, w)
        size = math.prod(shape)
        keys = _random.uniform(seed, ids, (size,), torch.float32)
        n_free = size
        if self.cspace.mask is not None:
            free = torch.broadcast_to(self.cspace.mask.to(x0.device), shape).reshape(-1)
            keys = torch.where(free, keys, 2.0)  # frozen features sort last
            n_free = max(int(free.sum()), 1)
        k = max(round(p * n_free), 1)
        ranks = keys.argsort(dim=1, stable=True).argsort(dim=1)
        return (ranks < k).view(n, *shape)
