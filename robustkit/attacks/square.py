"""Square Attack (Andriushchenko et al. 2020): a score-based random search over square windows of images.

Each query changes one square window of the best point found so far and keeps the change when the
margin loss rises (or the example is misclassified). The window's side shrinks on a fixed schedule
of the query count. Linf windows are set to a corner of the ball (one random sign per channel);
L2 windows get a pseudo-Gaussian bump and take the perturbation mass of a second window, so the
point stays on the sphere. It needs only the model's outputs. At Linf on a CPU, a model whose first
layers are a chain of convolutions, pools and activations is recomputed only near each query's
window (:mod:`robustkit.attacks.windowed`): the same queries, a fraction of the arithmetic.

Example:
    >>> import torch, robustkit as rk
    >>> from robustkit.attacks.square import square_fraction
    >>> [square_fraction(0.8, i) for i in (0, 11, 51, 4001)]
    [0.8, 0.4, 0.2, 0.00625]
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 6, 3))
    >>> x, y = torch.rand(4, 2, 6, 6), torch.randint(0, 3, (4,))
    >>> space = rk.LinfBall(eps=0.05, bounds=(0.0, 1.0))
    >>> result = rk.Square(space, queries=30)(net, x, y)
    >>> bool(space.contains(result.x_adv, x).all()), result.backward_passes
    (True, 0)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from robustkit import _random
from robustkit.attacks.base import Attack, Best, Problem
from robustkit.attacks.windowed import WindowedForward
from robustkit.errors import ConfigError, DataError
from robustkit.losses import LossFn
from robustkit.spaces import ContinuousSpace, L2Ball, LinfBall, PerturbationSpace

__all__ = ["Square", "square_fraction"]

#: Iterations after which the window fraction halves (the paper's schedule for 10,000 queries).
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, iteration: int, queries: int | None = None) -> float:
    """The share of the image a window covers at ``iteration`` (0-based), on the paper's schedule.

    ``p_init`` halves after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000. With
    ``queries`` the schedule is stretched to that many iterations (iteration ``i`` counts as
    ``int(i / queries * 10000)``); AutoAttack's standard Square (5,000 queries) does not stretch it.

    Example:
        >>> square_fraction(0.8, 2500, queries=5000) == 0.8 / 128
        True
    """
    at = int(iteration / queries * 10000) if queries else int(iteration)
    return p_init / 2 ** sum(at > t for t in _HALVINGS)


@functools.cache
def _rectangle(rows: int, cols: int) -> torch.Tensor:
    """Nested rectangles around the centre, ring k weighted 1 / (k + 1)^2, of unit L2 norm (float64)."""
    bump = torch.zeros(rows, cols, dtype=torch.float64)
    r, c = rows // 2, cols // 2
    for k in range(max(r + 1, c + 1)):
        bump[max(r - k, 0) : min(r + k + 1, rows), max(c - k, 0) : min(c + k + 1, cols)] += 1.0 / (k + 1) ** 2
    return bump / bump.norm()


@functools.cache
def _bump(side: int) -> torch.Tensor:
    """The L2 window pattern: a positive bump over the top half, a negative one below, unit norm."""
    half = side // 2
    bump = torch.cat([_rectangle(half, side), -_rectangle(side - half, side)]) if half else -_rectangle(side, side)
    return bump / bump.norm()


class Square(Attack):
    """Square Attack: random square windows over (C, H, W) inputs, kept when the margin loss rises.

    Linf: the start sets each column of each channel to ``x +- eps`` (random sign); a query sets a
    random window of side ``s`` to ``x +- eps``, one random sign per channel. L2: the start tiles the
    image with signed pseudo-Gaussian bumps scaled to the sphere; a query adds a signed bump to a
    window, moves the perturbation of a second window into it and rescales so that the whole
    perturbation keeps norm ``eps``. ``s = round(sqrt(p * H * W))`` (L2: at least 3 and odd) with
    ``p`` from :func:`square_fraction`. Each example draws its own windows and signs from its stream.

    Args:
        space: an ``LinfBall`` or ``L2Ball`` over image-shaped inputs (N, C, H, W) or (N, ..., H, W).
        queries: iterations per example after the start (AutoAttack's ``n_queries``); an example
            costs at most ``queries + 1`` forward passes (the final re-check of successes aside).
        p_init: the share of the image the first windows cover (0.8 in AutoAttack).
        rescale_schedule: stretch the schedule to ``queries`` (see :func:`square_fraction`).
        loss: the loss to raise; the default margin is > 0 exactly when the example is misclassified.
        targeted, seed, early_stop: see :class:`~robustkit.attacks.base.Attack`.

    Example:
        >>> import torch, robustkit as rk
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> x, y = torch.rand(3, 3, 8, 8), torch.randint(0, 4, (3,))
        >>> space = rk.L2Ball(eps=0.5, bounds=(0.0, 1.0))
        >>> result = rk.Square(space, queries=20)(net, x, y)
        >>> bool(space.contains(result.x_adv, x).all()), result.forward_passes <= 3 * 21 + 3
        (True, True)
    """

    name = "square"

    def __init__(
        self,
        space: PerturbationSpace,
        *,
        queries: int = 5000,
        p_init: float = 0.8,
        rescale_schedule: bool = False,
        loss: str | LossFn = "margin",
        targeted: bool = False,
        seed: int = 0,
        early_stop: bool = True,
    ) -> None:
        super().__init__(space, loss=loss, targeted=targeted, seed=seed, early_stop=early_stop)
        if not isinstance(space, LinfBall | L2Ball):
            raise ConfigError(f"Square works over rk.LinfBall or rk.L2Ball, got {type(space).__name__}")
        if int(queries) < 0:
            raise ConfigError(f"queries must be >= 0, got {queries!r}")
        if not 0.0 < float(p_init) <= 1.0:
            raise ConfigError(f"p_init must lie in (0, 1], got {p_init!r}: AutoAttack uses 0.8")
        self.queries = int(queries)
        self.p_init = float(p_init)
        self.rescale_schedule = bool(rescale_schedule)

    @property
    def cspace(self) -> ContinuousSpace:
        assert isinstance(self.space, ContinuousSpace)
        return self.space

    def config(self) -> dict[str, Any]:
        return {"queries": self.queries, "p_init": self.p_init, "rescale_schedule": self.rescale_schedule,
                **super().config()}

    def side(self, iteration: int, height: int, width: int) -> int:
        """The window side at ``iteration`` (0-based) on images of ``height`` x ``width``."""
        p = square_fraction(self.p_init, iteration, self.queries if self.rescale_schedule else None)
        s = max(round(math.sqrt(p * height * width)), 1)
        if isinstance(self.space, L2Ball):
            s = max(s, 3)
            s += 1 - s % 2
        return min(s, height, width)

    def _run(self, problem: Problem) -> Best:
        x = problem.x
        if x.dim() < 4:
            raise DataError(
                f"Square attacks images (N, C, H, W), got inputs of shape {tuple(x.shape)}: for flat inputs use "
                "rk.RandomSearch ('random-search')"
            )
        everyone = torch.arange(len(x), device=x.device)
        start = self._start(x, problem.ids)
        best = Best(start, x.device)
        # a Linf query changes one window: a chain CNN's passes then recompute only near it (CPU only: on a
        # GPU a small model's pass is bound by kernel launches, which the windowed pass has more of)
        windowed = isinstance(self.space, LinfBall) and x.device.type == "cpu"
        engine = WindowedForward.of(problem.model, x) if windowed else None
        with torch.no_grad():
            logits = problem.logits(start) if engine is None else problem.counted(engine.reset(start))
        best.update(everyone, start, problem.loss(logits, everyone), problem.success(logits, everyone))
        # the active examples' current points live in local tensors, written back when the set shrinks:
        # a query then costs no gather or scatter of the whole batch
        active = everyone[~best.success] if self.early_stop else everyone
        if engine is not None and len(active) < len(x):
            engine.keep(~best.success)
        x0, cur, cur_loss = x[active], best.x[active], best.loss[active]
        cur_success, ids = best.success[active], problem.ids[active]
        h, w = x.shape[-2:]
        for it in range(self.queries):
            if len(active) == 0:
                break
            proposal, corner = self._propose(x0, cur, ids, it)
            if engine is None:
                logits, loss = problem.evaluate(proposal, active)
            else:
                logits, patches = engine(proposal, corner, self.side(it, h, w))
                logits, loss = problem.counted(logits), problem.loss(logits, active)
            success = problem.success(logits, active)
            better = torch.where(success == cur_success, loss > cur_loss, success)
            cur = torch.where(better.view(-1, *[1] * (x.dim() - 1)), proposal, cur)
            cur_loss = torch.where(better, loss.to(cur_loss.dtype), cur_loss)
            cur_success = cur_success | success
            if engine is not None:
                engine.accept(patches, better)
            if self.early_stop and bool(success.any()):
                best.update(active, cur, cur_loss, cur_success)
                keep = ~cur_success
                active, x0, cur, cur_loss, cur_success, ids = (
                    t[keep] for t in (active, x0, cur, cur_loss, cur_success, ids))
                if engine is not None:
                    engine.keep(keep)
        if len(active):
            best.update(active, cur, cur_loss, cur_success)
        return best

    # ----------------------------------------------------------------- proposals
    def _start(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        space, eps = self.cspace, self.cspace.eps
        seed = _random.derive(self.seed, 0, 0)
        if isinstance(space, LinfBall):  # vertical stripes: one sign per channel and column
            shape = (*x.shape[1:-2], 1, x.shape[-1])
            signs = torch.where(_random.uniform(seed, ids, shape, x.dtype) < 0.5, -1.0, 1.0).to(x.dtype)
            return space.project(x + eps * signs, x)
        h, w = x.shape[-2:]
        s = max(h // 5, 1)
        delta = torch.zeros_like(x)
        signs = torch.where(_random.uniform(seed, ids, (*x.shape[1:-2], h // s, w // s), x.dtype) < 0.5, -1.0, 1.0)
        flips = _random.uniform(_random.derive(seed, 1), ids, (h // s, w // s), torch.float32) < 0.5
        bump = _bump(s).to(x)
        at = (h - s * 5) // 2 if h >= 5 else 0
        for i in range(h // s):
            for j in range(w // s):
                tile = torch.where(flips[:, i, j, None, None], bump.T, bump)
                rows, cols = slice(at + i * s, at + (i + 1) * s), slice(at + j * s, at + (j + 1) * s)
                delta[..., rows, cols] += tile.view(-1, *[1] * (x.dim() - 3), s, s) * signs[..., i, j, None, None]
        return self._on_sphere(x, delta)

    def _on_sphere(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``x`` plus ``delta`` rescaled to norm eps, then into the space (bounds, mask)."""
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
        return self.cspace.project(x + delta / norm * self.cspace.eps, x)

    @staticmethod
    def _window(draws: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
        """Top-left corners (N, 2) of one s x s window per example, from two uniform draws each (N, 2)."""
        top = (draws[:, 0] * (h - s + 1)).long().clamp_max(h - s)
        left = (draws[:, 1] * (w - s + 1)).long().clamp_max(w - s)
        return torch.stack([top, left], dim=1)

    @staticmethod
    def _inside(corner: torch.Tensor, s: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per example: bool (N, H, W) window mask and the row and column offsets into the window."""
        rows = torch.arange(h, device=corner.device) - corner[:, :1]
        cols = torch.arange(w, device=corner.device) - corner[:, 1:]
        in_rows, in_cols = (rows >= 0) & (rows < s), (cols >= 0) & (cols < s)
        return in_rows[:, :, None] & in_cols[:, None, :], rows.clamp(0, s - 1), cols.clamp(0, s - 1)

    def _propose(
        self, x0: torch.Tensor, current: torch.Tensor, ids: torch.Tensor, it: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The points of query ``it`` and the top-left corners (N, 2) of the (first) window each changed."""
        h, w = x0.shape[-2:]
        s = self.side(it, h, w)
        n, channels = len(x0), tuple(x0.shape[1:-2])
        lead = [1] * len(channels)  # the window spans every channel
        # one draw per query: two window corners, a transpose coin, then one sign per channel
        draws = _random.uniform(_random.derive(self.seed, it + 1), ids, (5 + math.prod(channels),), torch.float32)
        draws = draws.to(x0.device)
        signs = torch.where(draws[:, 5:] < 0.5, -1.0, 1.0).to(x0.dtype).view(n, *channels, 1, 1)
        corner = self._window(draws[:, 0:2], s, h, w)
        first, rows, cols = self._inside(corner, s, h, w)
        win = first.view(n, *lead, h, w)
        if isinstance(self.space, LinfBall):
            return self.cspace.project(torch.where(win, x0 + self.cspace.eps * signs, current), x0), corner
        second, _, _ = self._inside(self._window(draws[:, 2:4], s, h, w), s, h, w)
        win2 = second.view(n, *lead, h, w)
        delta = current - x0
        dims = (-2, -1)
        norm_first = (delta * win).pow(2).sum(dim=dims, keepdim=True).sqrt()
        norm_both = (delta * (win | win2)).pow(2).sum(dim=dims, keepdim=True).sqrt()
        norm_all = delta.flatten(1).norm(dim=1).view(-1, *[1] * (x0.dim() - 1))
        flips = draws[:, 4] < 0.5
        bump = _bump(s).to(x0)
        at = (rows[:, :, None], cols[:, None, :])
        pattern = torch.where(flips[:, None, None], bump.T[at], bump[at]).view(n, *lead, h, w)
        # the window gets a signed bump plus its old perturbation, with the mass of both windows
        new = (pattern * signs + delta / (norm_first + 1e-12)) * win
        room = (self.cspace.eps**2 - norm_all**2).clamp_min(0.0) / math.prod(channels)
        new = new / (new.pow(2).sum(dim=dims, keepdim=True).sqrt() + 1e-12) * (room + norm_both**2).sqrt()
        return self._on_sphere(x0, torch.where(win, new, torch.where(win2, 0.0, delta))), corner
