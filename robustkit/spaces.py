"""Perturbation spaces: what an attacker may change (the threat model).

A :class:`ContinuousSpace` works on tensors (an Lp ball around the clean input, intersected with
box bounds and a mask of features that may move). A :class:`DiscreteSpace` works on the domain's own
objects (strings, category choices) through candidate edits. Both answer ``contains(x_adv, x)``, the
validity oracle used by tests and reports, and carry one ``budget`` scalar that eps lists rescale.

Example:
    >>> import torch, robustkit as rk
    >>> space = rk.LinfBall(eps=0.1, bounds=(0.0, 1.0))
    >>> x = torch.full((2, 3), 0.5)
    >>> x_adv = space.project(x + 1.0, x)
    >>> bool(space.contains(x_adv, x).all()), round(float(x_adv.max()), 3)
    (True, 0.6)
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import torch

from robustkit import _random
from robustkit.errors import ConfigError, DataError

Bound = float | torch.Tensor
T = TypeVar("T")

__all__ = ["ContinuousSpace", "DiscreteSpace", "Edit", "L2Ball", "LinfBall", "PerturbationSpace"]


def _check_budget(value: float, what: str) -> float:
    if isinstance(value, bool | str | bytes):  # float("0.1") and float(True) would pass
        raise ConfigError(f"{what} must be a number, got {value!r}")
    try:
        budget = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(budget) or budget < 0:
        raise ConfigError(f"{what} must be a finite number >= 0, got {value!r}: pass e.g. {what}=0.1")
    return budget


class PerturbationSpace(ABC):
    """The set of inputs an attacker may produce from a clean input, under one budget scalar."""

    #: Short name used in reports and ``metrics.json`` ("linf", "l2", ...).
    name: str = "space"

    @property
    @abstractmethod
    def budget(self) -> float:
        """The scalar that eps lists and schedules rescale (eps, cost budget, edit count)."""

    @abstractmethod
    def with_budget(self, budget: float) -> PerturbationSpace:
        """A copy of this space with another budget."""

    @abstractmethod
    def contains(self, x_adv: Any, x: Any) -> torch.Tensor:
        """Bool tensor, one entry per example: is ``x_adv[i]`` an allowed perturbation of ``x[i]``?"""


class ContinuousSpace(PerturbationSpace):
    """A norm ball of radius ``eps`` around the clean input, inside ``bounds``, moving only ``mask``.

    Args:
        eps: radius of the ball (the budget), >= 0.
        bounds: ``(low, high)``, each a scalar or a tensor broadcastable to one example's shape.
        mask: optional bool tensor broadcastable to one example's shape; True where a feature may change.
        atol: tolerance of :meth:`contains` for floating-point rounding.
    """

    def __init__(
        self,
        eps: float,
        bounds: tuple[Bound, Bound] = (-math.inf, math.inf),
        mask: torch.Tensor | None = None,
        atol: float = 1e-5,
    ) -> None:
        self.eps = _check_budget(eps, "eps")
        if not isinstance(bounds, tuple | list) or len(bounds) != 2:
            raise ConfigError(f"bounds must be a (low, high) pair, got {bounds!r}")
        low = torch.as_tensor(bounds[0], dtype=torch.float64)
        high = torch.as_tensor(bounds[1], dtype=torch.float64)
        if torch.isnan(low).any() or torch.isnan(high).any():
            raise ConfigError("bounds contain NaN: give finite numbers or +-inf for an open side")
        try:
            inverted = bool((low > high).any())
        except RuntimeError as exc:
            raise ConfigError(f"low and high bounds have incompatible shapes: {exc}") from None
        if inverted:
            raise ConfigError("bounds are inverted (low > high somewhere): pass bounds=(low, high) with low <= high")
        self.low, self.high = low, high
        if mask is not None:
            mask = torch.as_tensor(mask)
            if mask.dtype != torch.bool:
                if not bool(((mask == 0) | (mask == 1)).all()):
                    raise ConfigError("mask must be boolean (True where a feature may change)")
                mask = mask.bool()
        self.mask = mask
        self.atol = float(atol)

    # ----------------------------------------------------------------- configuration
    @property
    def budget(self) -> float:
        return self.eps

    def with_budget(self, budget: float) -> ContinuousSpace:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.eps = _check_budget(budget, "eps")
        return clone

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:g})"

    def _placed(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``t`` on ``like``'s device (floating tensors in its dtype), copied once per device and dtype.

        A host-to-GPU copy of a small tensor stalls the GPU's queue, so an attack step that copied
        its bounds would wait on the previous step's kernels; the copies are kept instead.
        """
        dtype = like.dtype if t.dtype.is_floating_point else t.dtype
        if t.device == like.device and t.dtype == dtype:
            return t
        copies: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, int, torch.Tensor]]
        copies = self.__dict__.setdefault("_device_copies", {})
        key = (id(t), like.device, dtype)
        held = copies.get(key)
        # the source is kept in the entry (its id is never reused); its version counts in-place changes
        if held is None or held[0] is not t or held[1] != t._version:
            held = copies[key] = (t, t._version, t.to(like.device, dtype))
        return held[2]

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave out the device copies (they may live on a GPU)."""
        return {k: v for k, v in self.__dict__.items() if k != "_device_copies"}

    def _bounds_like(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._placed(self.low, x), self._placed(self.high, x)

    def _mask_like(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.mask is None:
            return None
        self._check_mask_fits(x)
        return self._placed(self.mask, x)

    def _check_mask_fits(self, x: torch.Tensor) -> None:
        assert self.mask is not None
        try:
            fits = torch.broadcast_shapes(self.mask.shape, x.shape[1:]) == x.shape[1:]
        except RuntimeError:
            fits = False
        if not fits:
            raise DataError(
                f"mask of shape {tuple(self.mask.shape)} does not fit one example of shape "
                f"{tuple(x.shape[1:])}: pass a bool mask broadcastable to one example's shape"
            )

    def check_inputs(self, x: torch.Tensor) -> None:
        """Raise :class:`DataError` if clean inputs are non-finite or outside the bounds."""
        if not torch.is_floating_point(x):
            raise DataError(f"inputs must be a floating-point tensor, got dtype {x.dtype}: convert with x.float()")
        if not bool(torch.isfinite(x).all()):
            raise DataError("inputs contain NaN or Inf values: clean or drop those examples first")
        low, high = self._bounds_like(x)
        try:
            below = x < low - self.atol
            above = x > high + self.atol
        except RuntimeError as exc:
            raise DataError(f"bounds do not broadcast to the inputs' shape {tuple(x.shape)}: {exc}") from None
        if self.mask is not None:
            self._check_mask_fits(x)
        if bool(below.any()) or bool(above.any()):
            lo_v, hi_v = float(x.min()), float(x.max())
            hint = " (pixels in 0-255? divide by 255)" if hi_v > 1.5 and float(high.max()) <= 1.0 else ""
            raise DataError(
                f"inputs lie outside the space's bounds: values span [{lo_v:g}, {hi_v:g}] but bounds are "
                f"[{float(low.min()):g}, {float(high.max()):g}]{hint}; rescale the inputs or widen bounds="
            )

    # ----------------------------------------------------------------- geometry
    @abstractmethod
    def _project_delta(self, delta: torch.Tensor) -> torch.Tensor:
        """Project a perturbation (already masked) onto the norm ball."""

    @abstractmethod
    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Steepest-ascent direction of unit norm for a (masked) gradient."""

    @abstractmethod
    def _ball_sample(self, shape: tuple[int, ...], seed: int, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A random perturbation inside the ball (before bounds), one per id."""

    @abstractmethod
    def _sphere_sample(
        self, shape: tuple[int, ...], seed: int, ids: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """A random perturbation on the ball's boundary (an extreme point), one per id."""

    @abstractmethod
    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-example norm of a perturbation."""

    def covering_budget(self, x: torch.Tensor) -> float | None:
        """A budget whose ball covers the whole box around any point, or None if the box is unbounded."""
        low, high = self._bounds_like(x)
        width = torch.broadcast_to(high - low, x.shape[1:])
        mask = self._mask_like(x)
        if mask is not None:
            width = width[torch.broadcast_to(mask, x.shape[1:])]
        if width.numel() == 0 or not bool(torch.isfinite(width).all()):
            return None
        return float(self.norm(width.reshape(1, -1))[0])

    def _apply_mask(self, t: torch.Tensor) -> torch.Tensor:
        mask = self._mask_like(t)
        return t if mask is None else t * mask

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The nearest allowed point (for Linf exactly; for L2 ball then box): inside ball, bounds and mask."""
        delta = self._project_delta(self._apply_mask(x_adv - x))
        low, high = self._bounds_like(x)
        return torch.clamp(x + delta, low, high)

    def projector(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """:meth:`project` around fixed clean inputs ``x``, with what depends on ``x`` alone prepared once."""
        return functools.partial(self.project, x=x)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, step_size: float | torch.Tensor) -> torch.Tensor:
        """One steepest-ascent step of length ``step_size`` (scalar or one per example) along ``grad``."""
        direction = self._direction(self._apply_mask(grad))
        if isinstance(step_size, torch.Tensor):
            return x_adv + step_size.reshape(-1, *([1] * (x_adv.dim() - 1))) * direction
        return torch.add(x_adv, direction, alpha=step_size)

    def init(self, x: torch.Tensor, *, seed: int = 0, ids: torch.Tensor | None = None) -> torch.Tensor:
        """A random starting point inside the space, drawn from per-example streams keyed by ``ids``."""
        ids = torch.arange(len(x), device=x.device) if ids is None else ids.to(x.device)
        noise = self._ball_sample(tuple(x.shape[1:]), seed, ids, x.dtype)
        return self.project(x + noise, x)

    def vertex(self, x: torch.Tensor, *, seed: int = 0, ids: torch.Tensor | None = None) -> torch.Tensor:
        """A random point on the ball's boundary (then clipped to the bounds): random-search proposals."""
        ids = torch.arange(len(x), device=x.device) if ids is None else ids.to(x.device)
        noise = self._sphere_sample(tuple(x.shape[1:]), seed, ids, x.dtype)
        return self.project(x + noise, x)

    def default_step_size(self, steps: int) -> float:
        """Step size for a ``steps``-step attack: 2.5 eps / steps (Madry et al.), eps for one step."""
        return self.eps if steps <= 1 else 2.5 * self.eps / steps

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x_adv.shape != x.shape:
            return torch.zeros(len(x), dtype=torch.bool, device=x.device)
        delta = x_adv - x
        ok = torch.isfinite(x_adv).flatten(1).all(dim=1)
        ok &= self.norm(delta) <= self.eps + self.atol
        low, high = self._bounds_like(x)
        inside = (x_adv >= low - self.atol) & (x_adv <= high + self.atol)
        ok &= inside.flatten(1).all(dim=1)
        mask = self._mask_like(x)
        if mask is not None:
            frozen = (delta.abs() <= self.atol) | mask
            ok &= frozen.flatten(1).all(dim=1)
        return ok


class LinfBall(ContinuousSpace):
    """All points within ``eps`` of the clean input in every feature (the L-infinity ball).

    Example:
        >>> import torch, robustkit as rk
        >>> rk.LinfBall(eps=0.3, bounds=(0.0, 1.0)).step(torch.zeros(1, 2), torch.tensor([[1.0, -2.0]]), 0.1)
        tensor([[ 0.1000, -0.1000]])
    """

    name = "linf"

    def _project_delta(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.clamp(-self.eps, self.eps)

    def projector(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The ball, the bounds and the mask meet in one box around ``x``: projecting is one clamp.

        Example:
            >>> import torch, robustkit as rk
            >>> rk.LinfBall(eps=0.1, bounds=(0.0, 1.0)).projector(torch.tensor([[0.05, 0.5]]))(torch.ones(1, 2))
            tensor([[0.1500, 0.6000]])
        """
        if type(self).project is not ContinuousSpace.project:  # a subclass's own projection is kept
            return super().projector(x)
        low, high = self._bounds_like(x)
        # clamped into the bounds on both sides: clean inputs may lie up to atol outside them
        lower, upper = torch.clamp(x - self.eps, low, high), torch.clamp(x + self.eps, low, high)
        mask = self._mask_like(x)
        if mask is not None:
            inside = torch.clamp(x, low, high)
            lower, upper = torch.where(mask, lower, inside), torch.where(mask, upper, inside)
        return functools.partial(torch.clamp, min=lower, max=upper)

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def _ball_sample(self, shape: tuple[int, ...], seed: int, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return (2.0 * _random.uniform(seed, ids, shape, dtype) - 1.0) * self.eps

    def _sphere_sample(
        self, shape: tuple[int, ...], seed: int, ids: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        signs = torch.where(_random.uniform(seed, ids, shape, dtype) < 0.5, -1.0, 1.0).to(dtype)
        return signs * self.eps

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        flat = delta.flatten(1)
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(len(flat))



class L2Ball(ContinuousSpace):
    """All points within Euclidean distance ``eps`` of the clean input (the L2 ball).

    Example:
        >>> import torch, robustkit as rk
        >>> rk.L2Ball(eps=1.0).step(torch.zeros(1, 2), torch.tensor([[3.0, 4.0]]), 1.0)
        tensor([[0.6000, 0.8000]])
    """

    name = "l2"

    @staticmethod
    def _example_norm(t: torch.Tensor) -> torch.Tensor:
        return t.flatten(1).norm(dim=1).reshape(-1, *([1] * (t.dim() - 1)))

    def _project_delta(self, delta: torch.Tensor) -> torch.Tensor:
        norms = self._example_norm(delta)
        factor = torch.clamp(self.eps / norms.clamp_min(1e-12), max=1.0)
        return delta * factor

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad / self._example_norm(grad).clamp_min(1e-12)

    def _n_free(self, shape: tuple[int, ...]) -> int:
        if self.mask is None:
            return max(1, math.prod(shape))
        return max(1, int(torch.broadcast_to(self.mask, shape).sum()))

    def _sphere_sample(
        self, shape: tuple[int, ...], seed: int, ids: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        g = self._apply_mask(_random.normal(seed, ids, shape, dtype))
        return g / self._example_norm(g).clamp_min(1e-12) * self.eps

    def _ball_sample(self, shape: tuple[int, ...], seed: int, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        direction = self._sphere_sample(shape, seed, ids, dtype)
        # the root in float64: float32 pow rounds differently in vectorised and scalar code paths,
        # which would make an example's start depend on its position in the batch
        u = _random.uniform(_random.derive(seed, 1), ids, (1,), torch.float64)
        radius = (u ** (1.0 / self._n_free(shape))).to(dtype)
        return direction * radius.reshape(-1, *([1] * len(shape)))

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).norm(dim=1)



class Edit(NamedTuple):
    """One candidate edit of a discrete space: change ``position`` to ``value`` at ``cost``.

    Immutable and light (a named tuple): a search builds hundreds per example and round."""

    position: int
    value: Any
    cost: float = 1.0


class DiscreteSpace(PerturbationSpace, Generic[T]):
    """Edits of the domain's own objects under a budget (edited positions, cost of edits).

    A subclass says how objects become a differentiable model input (:meth:`encode`), which edits are
    allowed at each position (:meth:`candidates`), how an edit is applied (:meth:`apply`) and what is
    allowed overall (:meth:`contains`). The gradient-guided search attack needs nothing else; a domain
    may override :meth:`scores` with a faster first-order scoring than re-encoding each candidate.
    """

    def __init__(self, budget: float) -> None:
        self._budget = _check_budget(budget, "budget")

    @property
    def budget(self) -> float:
        return self._budget

    def with_budget(self, budget: float) -> DiscreteSpace[T]:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._budget = _check_budget(budget, "budget")
        return clone

    def with_seed(self, seed: int) -> DiscreteSpace[T]:
        """This space offering the candidates of random stream ``seed``: a space that samples its
        candidates (rather than listing them all) returns a copy drawing another sample; others, itself."""
        return self

    @abstractmethod
    def encode(self, xs: Sequence[T], device: torch.device | str = "cpu") -> torch.Tensor:
        """The model's input for a batch of objects, as a float tensor gradients can flow into."""

    @abstractmethod
    def candidates(self, x: T, original: T) -> list[Edit]:
        """Edits allowed next on ``x`` (already edited from ``original``) that keep it within budget."""

    @abstractmethod
    def apply(self, x: T, edit: Edit) -> T:
        """The object with ``edit`` applied (a new object; ``x`` is not modified)."""

    def size(self, x: T) -> int:
        """How large ``x``'s encoding is, roughly (e.g. a text's length): the searches evaluate objects of
        similar size together, so that a padded batch wastes less. 0 (the default) keeps their order."""
        return 0

    def scores(self, x: T, grad: torch.Tensor, edits: Sequence[Edit]) -> torch.Tensor:
        """First-order estimates of the loss change of each edit: <grad, encode(edited) - encode(x)>."""
        if not edits:
            return grad.new_zeros(0)
        base = self.encode([x], grad.device)[0]
        moved = self.encode([self.apply(x, e) for e in edits], grad.device)
        return ((moved - base) * grad).flatten(1).sum(dim=1)
