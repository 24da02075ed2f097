"""The attack interface and the chores every attack shares.

:class:`Attack` owns input validation, the mask of attackable examples, device placement, frozen
eval mode, pass counting and the final success check; a concrete attack only implements
:meth:`Attack._run` on the examples it may attack, through a :class:`Problem`.

Memory rule: an attack first runs on the whole batch it is given; if that runs out of memory
(CUDA, or the CPU allocator), it halves the chunk and goes on chunk by chunk, down to one example,
so a batch too large for the machine is slower, not a crash. Each example's random stream is keyed
by its id, so the adversarial examples do not depend on the chunking.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustkit.errors import ConfigError, DataError, ModelError
from robustkit.losses import LossFn, get_loss
from robustkit.models import (
    channels_last_on_cpu,
    frozen_eval,
    keep_heap,
    logits_of,
    model_device,
    out_of_memory,
    release_memory,
)
from robustkit.spaces import ContinuousSpace, PerturbationSpace

__all__ = ["Attack", "AttackResult", "Best", "Problem", "as_labels", "integer_at_least", "seed_value"]

#: seeds are integers from 0 to 2**63 - 1 (what torch's generators take)
MAX_SEED = 2**63 - 1


def integer_at_least(name: str, value: Any, low: int = 1) -> int:
    """``value`` as an integer >= ``low`` (a count of steps, restarts, queries ...): 2.5 or True is refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def seed_value(seed: Any) -> int:
    """``seed`` checked: an integer from 0 to 2**63 - 1."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) <= MAX_SEED:
        raise ConfigError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")
    return int(seed)


def as_labels(y: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """Labels as a 1-D int64 tensor of class indices >= 0 (an (N, 1) column is flattened); anything else, such as
    texts, fractions, one-hot rows or negative values, is a :class:`DataError`."""
    try:
        t = torch.as_tensor(y, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise DataError(f"labels must be class indices (a 1-D integer tensor), got {type(y).__name__}") from None
    if t.dim() == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 1:
        raise DataError(f"labels must be a 1-D tensor of class indices, got shape {tuple(t.shape)}")
    if t.is_floating_point():
        if not bool((t == t.round()).all()):
            raise DataError("labels must be class indices 0..C-1, got fractional values (one-hot or soft labels?)")
    elif t.dtype not in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        raise DataError(f"labels must be integer class indices, got dtype {t.dtype}")
    t = t.long()
    if len(t) and int(t.min()) < 0:
        raise DataError("labels must be class indices >= 0")
    return t


@dataclass
class AttackResult:
    """What every attack returns.

    Attributes:
        x_adv: adversarial inputs (a tensor, or a list of objects for discrete spaces); examples
            outside the mask are returned unchanged.
        success: bool per example: the returned input crosses the model's decision rule.
        loss: the attack loss of each returned input (0 for examples not attacked).
        attacked: bool per example: was it attacked (the mask)?
        forward_passes: example-forward passes spent (a batch of 256 counts 256).
        backward_passes: example-backward passes spent.
    """

    x_adv: Any
    success: torch.Tensor
    loss: torch.Tensor
    attacked: torch.Tensor
    forward_passes: int = 0
    backward_passes: int = 0
    info: dict[str, Any] = field(default_factory=dict)


#: rows per model pass when attacking a convolutional model on the CPU (docs/benchmarks.md, performance
#: findings 7-8): a larger batch's activations pass glibc's 32 MiB ceiling, so every pass maps them afresh
CPU_ROWS = 64


class Problem:
    """The attackable examples of one call and the model's view of them, with pass counting.

    Attacks call :meth:`loss_grad` and :meth:`evaluate`; both take the positions (into this
    problem's examples) of the inputs passed, so the active set may shrink as examples succeed.
    """

    def __init__(
        self,
        model: Callable[[Any], Any],
        x: Any,
        y: torch.Tensor,
        target: torch.Tensor | None,
        ids: torch.Tensor,
        loss_fn: LossFn,
        eot: int = 1,
        reference: torch.Tensor | None = None,
        hit_target: bool = True,
        start: torch.Tensor | None = None,
        rows: int | None = None,
    ) -> None:
        self.model = model
        #: rows per model pass (None: the whole batch at once)
        self.rows = rows
        self.hit_target = hit_target
        self.reference = reference
        #: per example, a point to begin from (attacks with ``Attack.takes_start``), or None
        self.start = start
        self.x = x
        self.y = y
        self.target = target
        self.ids = ids
        self.loss_fn = loss_fn
        self.eot = eot
        self.forward_passes = 0
        self.backward_passes = 0
        self.n_classes: int | None = None
        self._labels_at: tuple[torch.Tensor, torch.Tensor] | None = None
        #: diagnostics an attack records for this call (returned as ``AttackResult.info``)
        self.info: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.y)

    def logits(self, x: Any) -> torch.Tensor:
        """Logits of a batch, validated against the inputs and labels on first use."""
        if self.n_classes is not None:
            return self.counted(self._passes(x), len(x))
        try:
            out = self._passes(x)
        except (RuntimeError, ValueError, TypeError) as exc:
            if out_of_memory(exc):
                raise
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            form = f" (shape {tuple(x.shape)}, dtype {x.dtype})" if isinstance(x, torch.Tensor) else ""
            raise DataError(f"the model does not take these inputs{form}: {first}; check their shape and dtype "
                            "against the model") from None
        return self.counted(out, len(x))

    def counted(self, logits: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """``logits`` of a forward pass on ``n`` inputs (default: one per row), counted, and validated on
        first use; for passes an attack makes itself (a :class:`~robustkit.attacks.windowed.WindowedForward`)."""
        self.forward_passes += len(logits)
        if self.n_classes is None:
            self._validate(logits, len(logits) if n is None else n)
        return logits

    def _passes(self, x: Any) -> torch.Tensor:
        """The model's logits, in slices of ``rows`` rows where it is set."""
        if self.rows is None or not isinstance(x, torch.Tensor) or len(x) <= self.rows:
            return logits_of(self.model(x))
        return torch.cat([logits_of(self.model(part)) for part in x.split(self.rows)])

    def _validate(self, logits: torch.Tensor, n: int) -> None:
        if len(logits) != n:
            sliced = f", passed in slices of {self.rows}" if self.rows is not None and n > self.rows else ""
            raise ModelError(f"the model returned {len(logits)} rows of logits for a batch of {n} inputs{sliced}: "
                             "it must return one row per input")
        n_classes = logits.shape[1]
        if len(self.y) and int(self.y.max()) >= n_classes:
            raise DataError(
                f"labels go up to {int(self.y.max())} but the model outputs {n_classes} logits: "
                "labels must be class indices 0..C-1 matching the model's outputs"
            )
        if self.target is not None and len(self.target) and int(self.target.max()) >= n_classes:
            raise DataError(f"target classes must lie in 0..{n_classes - 1}")
        if not bool(torch.isfinite(logits).all()):
            raise ModelError("the model returned NaN or Inf logits on the inputs: check the model and inputs")
        self.n_classes = n_classes

    def _labels(self, idx: torch.Tensor) -> torch.Tensor:
        """``y[idx]``, gathered once per index tensor: attacks pass the same one step after step."""
        held = self._labels_at
        if held is None or held[0] is not idx:
            held = self._labels_at = (idx, self.y[idx])
        return held[1]

    def success(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Decision rule: misclassified (untargeted) or the target predicted (targeted).

        With ``hit_target=False`` the target only steers the loss and any misclassification succeeds.
        """
        pred = logits.argmax(dim=1)
        if self.target is not None and self.hit_target:
            return pred == self.target[idx]
        return pred != self._labels(idx)

    def loss(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Per-example loss; its third argument is the target class, else the ``reference`` if given."""
        third = self.target if self.target is not None else self.reference
        return self.loss_fn(logits, self._labels(idx), None if third is None else third[idx])

    def loss_grad(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, per-example loss and the input gradient (averaged over ``eot`` samples)."""
        if self.eot == 1:  # the common case, without the accumulators: an attack step is launch-bound on GPUs
            return self._one_gradient(x, idx)
        grad = torch.zeros_like(x)
        loss_sum = torch.zeros(len(x), device=x.device, dtype=x.dtype)
        for _ in range(self.eot):
            logits, loss, g = self._one_gradient(x, idx)
            grad += g
            loss_sum += loss
        return logits, loss_sum / self.eot, grad / self.eot

    def _one_gradient(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.logits(xr)
            loss = self.loss(logits, idx)
            # a model whose outputs do not depend on its input through autograd gives a zero gradient
            # (the gradient check flags it) instead of an autograd error
            (g,) = torch.autograd.grad(loss.sum(), xr, allow_unused=True) if loss.requires_grad else (None,)
        self.backward_passes += len(x)
        grad = torch.zeros_like(x) if g is None else torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
        return logits.detach(), loss.detach(), grad

    def smallest_scale(self, x0: torch.Tensor, delta: torch.Tensor, idx: torch.Tensor, steps: int) -> torch.Tensor:
        """Per example, the smallest scale ``t`` in (0, 1] found by ``steps`` bisections at which
        ``x0 + t * delta`` still succeeds (``x0 + delta`` is taken to succeed)."""
        shape = (-1,) + (1,) * (x0.dim() - 1)
        lo = torch.zeros(len(x0), device=x0.device, dtype=x0.dtype)
        hi = torch.ones_like(lo)
        for _ in range(steps):
            mid = (lo + hi) / 2
            logits, _ = self.evaluate(x0 + mid.view(shape) * delta, idx)
            adv = self.success(logits, idx)
            hi, lo = torch.where(adv, mid, hi), torch.where(adv, lo, mid)
        return hi

    def evaluate(self, x: Any, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and per-example loss without gradients."""
        with torch.no_grad():
            logits = self.logits(x)
            return logits, self.loss(logits, idx)


class Best:
    """Per-example best point so far: a success beats a failure, then a higher loss wins."""

    def __init__(self, x: Any, device: torch.device) -> None:
        self.x: Any = x.clone() if isinstance(x, torch.Tensor) else list(x)
        n = len(x)
        self.loss = torch.full((n,), float("-inf"), device=device)
        self.success = torch.zeros(n, dtype=torch.bool, device=device)

    def update(
        self, idx: torch.Tensor | None, x: torch.Tensor, loss: torch.Tensor, success: torch.Tensor
    ) -> None:
        """Take ``x[i]`` as the best point of example ``idx[i]`` where it beats the one held.

        ``idx=None`` means every example, in order (no gather or scatter: a GPU step is launch-bound).
        """
        shape = (-1,) + (1,) * (x.dim() - 1)
        if idx is None:
            better = torch.where(success == self.success, loss > self.loss, success)
            self.x = torch.where(better.view(shape), x.to(self.x.dtype), self.x)
            self.loss = torch.where(better, loss.to(self.loss.dtype), self.loss)
            self.success = self.success | success
            return
        old_s, old_l = self.success[idx], self.loss[idx]
        better = torch.where(success == old_s, loss > old_l, success)
        self.x[idx] = torch.where(better.view(shape), x.to(self.x.dtype), self.x[idx])
        self.loss[idx] = torch.where(better, loss.to(self.loss.dtype), old_l)
        self.success[idx] = success | old_s


class Attack(ABC):
    """Base of every attack: ``attack(model, x, y, mask=..., target=...) -> AttackResult``.

    Args:
        space: the perturbation space (threat model).
        loss: name of the loss to maximise ("ce", "margin", "dlr") or a callable.
        targeted: if True, ``target=`` classes must be passed and success means predicting them. An
            integer k (not a bool) asks for the top-k targeted mode of AutoAttack's APGD-T and FAB-T:
            each example is attacked with the targeted loss towards its most likely other class on
            the clean input, then the next, up to k classes, each run only on the examples still
            robust; success means any misclassification, so the attack is untargeted from outside.
        seed: seed of the per-example random streams (random starts, restarts).
        early_stop: stop spending work on examples that already succeeded.
        eot: gradient samples averaged per step (expectation over transformation, for random models).
    """

    name = "attack"
    #: whether ``__call__`` takes ``start=`` points to begin from (a warm start)
    takes_start = False

    def __init__(
        self,
        space: PerturbationSpace,
        *,
        loss: str | LossFn = "ce",
        targeted: bool | int = False,
        seed: int = 0,
        early_stop: bool = True,
        eot: int = 1,
    ) -> None:
        if not isinstance(space, PerturbationSpace):
            raise ConfigError(f"space must be a robustkit PerturbationSpace (e.g. rk.LinfBall), got {space!r}")
        self.seed = seed_value(seed)
        self.eot = integer_at_least("eot", eot)
        self.space = space
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        if isinstance(targeted, bool):
            self.top_k = 0
        elif isinstance(targeted, numbers.Integral) and targeted >= 1:
            self.top_k = int(targeted)
        else:
            raise ConfigError(f"targeted must be True, False or a number of target classes >= 1, got {targeted!r}")
        self.loss_fn = get_loss(loss, bool(targeted))
        #: True when ``target=`` must be passed (the top-k mode is untargeted from outside)
        self.targeted = targeted is True
        self.early_stop = early_stop

    def config(self) -> dict[str, Any]:
        """The settings that define this attack, for reports and ``metrics.json``."""
        return {"loss": self.loss_name, "targeted": self.top_k or self.targeted, "eot": self.eot}

    @property
    def members(self) -> list[Attack]:
        """The single attacks this one runs: itself (an :class:`~robustkit.attacks.ensemble.Ensemble`, its
        members)."""
        return [self]

    def with_space(self, space: PerturbationSpace) -> Attack:
        """A copy of this attack over another space (another budget)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.space = space
        return clone

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({self.space!r}, {settings})"

    def __call__(
        self,
        model: nn.Module,
        x: Any,
        y: torch.Tensor | Sequence[int],
        *,
        mask: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
        start: torch.Tensor | None = None,
    ) -> AttackResult:
        """Attack the examples selected by ``mask`` (all by default) and return an :class:`AttackResult`.

        Args:
            model: module returning logits (argmax is the decision rule).
            x: clean inputs (a tensor for continuous spaces, a sequence of objects for discrete ones).
            y: true class indices.
            mask: bool per example: which examples may be attacked (the others are returned unchanged).
            target: target classes, required when ``targeted=True``.
            ids: int64 per example keying its random stream (default: positions in this batch).
            reference: optional per-example tensor handed to the loss as its third argument
                (for example the clean logits of the TRADES KL loss).
            start: points to begin from, shaped like ``x`` (a warm start, for example another attack's
                adversarial points), where the attack has ``takes_start`` (FMN).
        """
        device = model_device(model)
        if device.type == "cpu":
            keep_heap()
        y_t = as_labels(y, device)
        n = len(y_t)
        x = self._prepare_inputs(x, n, device)
        begin = self._prepare_start(start, x, device)
        mask_t = self._prepare_mask(mask, n, device)
        target_t = self._prepare_target(target, y_t, device)
        ids_t = torch.arange(n, device=device) if ids is None else torch.as_tensor(ids, device=device).long()
        if len(ids_t) != n:
            raise DataError(f"ids has {len(ids_t)} entries for {n} examples")

        idx = mask_t.nonzero().squeeze(1)
        success = torch.zeros(n, dtype=torch.bool, device=device)
        loss = torch.zeros(n, device=device)
        if len(idx) == 0:
            return AttackResult(self._copy(x), success, loss, mask_t)
        ref = None if reference is None else torch.as_tensor(reference, device=device)
        x_adv, forward, backward, infos = self._copy(x), 0, 0, []
        chunk, done = len(idx), 0
        with frozen_eval(model):
            while done < len(idx):  # one chunk unless memory runs out: then halve it and go on
                part = idx[done : done + chunk]
                problem: Problem | None = None
                try:  # slicing is cheap next to an attack: memory runs out in the passes
                    with channels_last_on_cpu(model, self._take(x, part[:2])) as convolutional:
                        # the row slices pay where the layout does: a CPU model's convolutions on 4-D inputs
                        problem = Problem(model, self._take(x, part), y_t[part],
                                          None if target_t is None else target_t[part], ids_t[part], self.loss_fn,
                                          self.eot, None if ref is None else ref[part],
                                          start=None if begin is None else begin[part],
                                          rows=CPU_ROWS if convolutional else None)
                        best = self._solve(problem)
                    self._confirm(problem, best)  # in the model's own layout: the successes reported hold there
                except (RuntimeError, MemoryError) as exc:
                    if not out_of_memory(exc):
                        raise
                    if chunk == 1:
                        raise ModelError("attacking even one example runs out of memory: use a smaller model "
                                         "or a device with more memory") from None
                    if problem is not None:
                        forward, backward = forward + problem.forward_passes, backward + problem.backward_passes
                    chunk = (chunk + 1) // 2
                    release_memory(device)
                    continue
                x_adv = self._merge(x_adv, part, best.x)
                success[part] = best.success
                loss[part] = best.loss.to(loss.dtype)
                forward, backward = forward + problem.forward_passes, backward + problem.backward_passes
                infos.append(problem.info)
                done += len(part)
        info = infos[0] if len(infos) == 1 else {"chunks": infos, "chunk_size": chunk}
        return AttackResult(x_adv, success, loss, mask_t, forward, backward, info)

    def _solve(self, problem: Problem) -> Best:
        """:meth:`_run`, or in the top-k targeted mode one targeted run per target class on the survivors."""
        if not self.top_k:
            return self._run(problem)
        with torch.no_grad():
            clean = problem.logits(problem.x)
        # the other classes, most likely first, ranked once on the clean inputs
        ranked = clean.scatter(1, problem.y[:, None], float("-inf")).argsort(dim=1, descending=True)
        best = Best(problem.x, clean.device)
        # the outer problem scores each returned point with the target it was found for
        problem.target, problem.hit_target = ranked[:, 0].clone(), False
        for k in range(min(self.top_k, clean.shape[1] - 1)):
            todo = (~best.success).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            ref = None if problem.reference is None else problem.reference[todo]
            sub = Problem(problem.model, self._take(problem.x, todo), problem.y[todo], ranked[todo, k],
                          problem.ids[todo], problem.loss_fn, problem.eot, ref, hit_target=False,
                          start=None if problem.start is None else problem.start[todo], rows=problem.rows)
            found = self._run(sub)
            problem.forward_passes += sub.forward_passes
            problem.backward_passes += sub.backward_passes
            problem.info.setdefault("per_target", []).append(sub.info)
            took = found.success | (found.loss > best.loss[todo])
            problem.target[todo[took]] = ranked[todo[took], k]
            best.update(todo, found.x, found.loss, found.success)
        return best

    # ----------------------------------------------------------------- hooks for subclasses
    @abstractmethod
    def _run(self, problem: Problem) -> Best:
        """Adversarial versions of ``problem.x`` (same order), each inside the space, with the
        success flag and loss that a forward pass on exactly that point gave."""

    def _confirm(self, problem: Problem, best: Best) -> None:
        """Re-check the claimed successes with one fresh batched forward pass on the returned points.

        Failures need no re-check: each returned failure is the point whose own forward pass said so.
        """
        idx = best.success.nonzero().squeeze(1)
        if len(idx) == 0:
            return
        logits, loss = problem.evaluate(self._take(best.x, idx), idx)
        best.success[idx] = problem.success(logits, idx)
        best.loss[idx] = loss.to(best.loss.dtype)

    # ----------------------------------------------------------------- input handling (continuous)
    def _prepare_inputs(self, x: Any, n: int, device: torch.device) -> Any:
        if not isinstance(x, torch.Tensor):
            raise DataError(f"inputs must be a tensor for {type(self.space).__name__}, got {type(x).__name__}")
        if len(x) != n:
            raise DataError(f"got {len(x)} inputs but {n} labels: pass one label per input")
        x = x.to(device)
        if isinstance(self.space, ContinuousSpace):
            self.space.check_inputs(x)
        return x

    def _take(self, x: Any, idx: torch.Tensor) -> Any:
        return x[idx]

    def _copy(self, x: Any) -> Any:
        return x.clone()

    def _merge(self, x: Any, idx: torch.Tensor, x_sub: Any) -> Any:
        out = x.clone()
        out[idx] = x_sub.to(out.dtype)
        return out

    def _prepare_start(self, start: torch.Tensor | None, x: Any, device: torch.device) -> torch.Tensor | None:
        if start is None:
            return None
        if not self.takes_start:
            raise ConfigError(f"{type(self).__name__} does not take start= points: only attacks with takes_start "
                              "(rk.FMN) begin from given points")
        if not isinstance(start, torch.Tensor) or not isinstance(x, torch.Tensor) or start.shape != x.shape:
            shape = tuple(start.shape) if isinstance(start, torch.Tensor) else type(start).__name__
            raise DataError(f"start must be a tensor shaped like the inputs {tuple(getattr(x, 'shape', ()))}, "
                            f"got {shape}")
        begin = start.detach().to(device=device, dtype=x.dtype)
        if isinstance(self.space, ContinuousSpace):
            try:
                self.space.check_inputs(begin)
            except DataError as exc:
                raise DataError(f"start points: {exc}") from None
        return begin

    @staticmethod
    def _prepare_mask(mask: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        if mask is None:
            return torch.ones(n, dtype=torch.bool, device=device)
        m = torch.as_tensor(mask, device=device)
        if m.shape != (n,):
            raise DataError(f"mask must hold one bool per example ({n}), got shape {tuple(m.shape)}")
        if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
            raise DataError("mask must hold True/False (or 1/0) per example, got other values")
        return m.bool()

    def _prepare_target(self, target: Any, y: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        if not self.targeted:
            if target is not None:
                raise ConfigError("target= was given to an untargeted attack: build it with targeted=True")
            return None
        if target is None:
            raise ConfigError("a targeted attack needs target= (one class index per example)")
        t = torch.as_tensor(target, device=device).long()
        if t.shape != y.shape:
            raise DataError(f"target must hold one class per example, got shape {tuple(t.shape)}")
        if len(t) and int(t.min()) < 0:
            raise DataError("target classes must be >= 0")
        return t
