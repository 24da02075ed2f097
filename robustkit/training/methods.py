"""Adversarial training methods: each one computes the training loss of a batch.

The loop (:class:`~robustkit.training.AdversarialTrainer`) owns everything else: the optimizer,
schedules, checkpoints, validation. A method is a small class with :meth:`Method.loss`; pass it by
name (``method="pgd"``) or configured (``method=rk.methods.TRADES(beta=6.0)``).

Example:
    >>> import robustkit as rk
    >>> rk.methods.get("trades").beta
    6.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from robustkit import distributed, losses
from robustkit.attacks import FGSM, PGD
from robustkit.errors import ConfigError
from robustkit.models import logits_of
from robustkit.spaces import ContinuousSpace

if TYPE_CHECKING:
    from robustkit.training.callbacks import Callback

__all__ = ["TRADES", "FGSMMix", "Fast", "Free", "Loss", "Method", "PGDTraining", "Standard", "get"]


class Loss(NamedTuple):
    """What :meth:`Method.loss` returns: the scalar to minimise and the logits and labels it was computed on
    (the epoch's training accuracy is counted from them)."""

    value: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor


@dataclass
class Batch:
    """What a method sees of one training batch.

    Attributes:
        model: the model, in train mode.
        x, y: inputs and labels on the model's device.
        space: the perturbation space at this step's budget (after warm-up).
        attackable: bool per example: which examples may be perturbed (the others stay clean).
        ids: per-example random-stream ids; seed: this epoch's seed.
        class_weights: optional per-class loss weights.
        replay: index of the replay (``Free``), else 0.
        net: what the training loss runs through (the model in DistributedDataParallel when
            distributed, else None: the model itself). Attacks always use ``model``.
        weights: per-example weight of the loss: 0 for a distributed sampler's padding copies,
            else 1 (None: all 1).
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    space: ContinuousSpace
    attackable: torch.Tensor
    ids: torch.Tensor
    seed: int
    class_weights: torch.Tensor | None = None
    replay: int = 0
    net: nn.Module | None = field(default=None, repr=False)
    weights: torch.Tensor | None = field(default=None, repr=False)

    def example_weights(self, n: int) -> torch.Tensor:
        """Per-example weights for ``n`` values computed on (copies of) the batch, in batch order."""
        w = self.weights if self.weights is not None else torch.ones(len(self.y), device=self.y.device)
        if n % len(w):
            raise ValueError(f"{n} values do not line up with a batch of {len(w)}")
        return w.repeat(n // len(w))

    def mean(self, values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted mean of per-example ``values`` over the whole (global) batch.

        Under DDP each process returns its own weighted sum divided by the global weight over the
        number of processes, so DDP's gradient average is exactly the single-process gradient.
        """
        w = self.example_weights(len(values))
        if weights is not None:
            w = w * weights
        denominator = distributed.all_sum(w.sum().detach()) / distributed.world_size()
        return (values * w).sum() / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)

    def criterion(self, logits: torch.Tensor, y: torch.Tensor) -> Loss:
        """Mean cross-entropy, weighted per class when class weights are set, with the logits it was computed on."""
        per_example = nn.functional.cross_entropy(logits.float(), y, reduction="none")
        value = self.mean(per_example, self.class_weights[y] if self.class_weights is not None else None)
        return Loss(value, logits.detach(), y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of((self.net or self.model)(x))


class Method:
    """A training method: the loss of one batch, plus what the loop needs to know about it."""

    #: name used in configs and reports
    name = "method"
    #: optimizer steps taken on each batch (``Free`` replays); epochs are divided by it
    replays = 1
    #: forward-backward passes over the training data per epoch, relative to standard training: what
    #: :class:`~robustkit.training.callbacks.RunClock` scales an epoch's time by (None: unknown)
    passes: float | None = None
    #: keep the epoch with the best robust validation accuracy (an attack over the training space): the one
    #: rule that picks the weights a fit returns. False for standard training (its robustness is not what it
    #: optimises) and for methods trained against another threat (text obfuscations), which that attack does
    #: not measure: they keep their last epoch
    select_by_validation = True

    def loss(self, batch: Batch) -> Loss:
        """The training loss of a batch, with the logits and labels behind it (:meth:`Batch.criterion` gives
        both for a cross-entropy)."""
        raise NotImplementedError

    def after_step(self, batch: Batch) -> None:
        """Called after each optimizer step (``Free`` updates its perturbation here)."""

    def callbacks(self) -> list[Callback]:
        """Callbacks the method brings to every fit (``Fast``: its overfitting guard); default none."""
        return []

    def config(self) -> dict[str, Any]:
        """Settings for reports and ``config.yaml``."""
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config()})"


class Standard(Method):
    """Plain training on clean inputs: the baseline every report compares against."""

    name = "standard"
    select_by_validation = False
    passes = 1.0

    def loss(self, batch: Batch) -> Loss:
        return batch.criterion(batch.forward(batch.x), batch.y)


class FGSMMix(Method):
    """The classic recipe (Goodfellow et al. 2015): clean and FGSM batches concatenated, equal weight."""

    name = "fgsm-mix"
    passes = 3.0  # the FGSM pass, then the clean and adversarial halves

    def loss(self, batch: Batch) -> Loss:
        x_adv = FGSM(batch.space, seed=batch.seed)(batch.model, batch.x, batch.y, mask=batch.attackable).x_adv
        both = torch.cat([batch.x, x_adv])
        return batch.criterion(batch.forward(both), torch.cat([batch.y, batch.y]))


class _AdversarialCE(Method):
    """Cross-entropy on adversarial inputs produced by an attack built per batch."""

    def _attack(self, space: ContinuousSpace, seed: int) -> PGD:
        raise NotImplementedError

    def loss(self, batch: Batch) -> Loss:
        if batch.space.budget <= 0:  # the first step of a budget warm-up: nothing to attack yet
            return batch.criterion(batch.forward(batch.x), batch.y)
        attack = self._attack(batch.space, batch.seed)
        x_adv = attack(batch.model, batch.x, batch.y, mask=batch.attackable, ids=batch.ids).x_adv
        return batch.criterion(batch.forward(x_adv), batch.y)


class Fast(_AdversarialCE):
    """FGSM from a random start with step ``alpha`` x eps (Wong et al. 2020), guarded against
    catastrophic overfitting: every epoch the loop checks PGD accuracy on a held-out batch and, if it
    falls by more than ``guard_drop`` from its best, restores the best weights and stops."""

    name = "fast"
    passes = 2.0  # one attack step, one training pass

    def __init__(self, alpha: float = 1.25, guard_drop: float = 0.2, guard_steps: int = 10) -> None:
        if not alpha > 0 or not 0 < guard_drop <= 1 or guard_steps < 1:
            raise ConfigError("Fast needs alpha > 0, 0 < guard_drop <= 1 and guard_steps >= 1")
        self.alpha, self.guard_drop, self.guard_steps = float(alpha), float(guard_drop), int(guard_steps)

    def _attack(self, space: ContinuousSpace, seed: int) -> PGD:
        return PGD(space, steps=1, step_size=self.alpha * space.budget, seed=seed, early_stop=False)

    def callbacks(self) -> list[Callback]:
        from robustkit.training.callbacks import OverfittingGuard  # callbacks import methods: built on use

        return [OverfittingGuard(self.guard_drop, self.guard_steps)]

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": self.alpha, "guard_drop": self.guard_drop, "guard_steps": self.guard_steps}


class PGDTraining(_AdversarialCE):
    """Madry et al. (2018): cross-entropy on PGD examples from a random start."""

    name = "pgd"

    def __init__(self, steps: int = 10, step_size: float | None = None) -> None:
        if steps < 1:
            raise ConfigError(f"steps must be >= 1, got {steps!r}")
        self.steps, self.step_size = int(steps), step_size
        self.passes = self.steps + 1.0  # every step runs to the end (no early stop), then the training pass

    def _attack(self, space: ContinuousSpace, seed: int) -> PGD:
        return PGD(space, steps=self.steps, step_size=self.step_size, seed=seed, early_stop=False)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "steps": self.steps, "step_size": self.step_size}


class TRADES(Method):
    """Zhang et al. (2019): CE(f(x), y) + beta * KL(f(x) || f(x')), with x' maximising the KL term
    by PGD from a tiny random start (the inner maximisation is on the KL, as in the paper)."""

    name = "trades"

    def __init__(self, beta: float = 6.0, steps: int = 10, step_size: float | None = None) -> None:
        if beta < 0 or steps < 1:
            raise ConfigError("TRADES needs beta >= 0 and steps >= 1")
        self.beta, self.steps, self.step_size = float(beta), int(steps), step_size
        self.passes = self.steps + 2.0  # the KL steps, then the clean and adversarial training passes

    @staticmethod
    def _kl_loss(logits: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor | None) -> torch.Tensor:
        assert clean_logits is not None
        return losses.kl(logits, clean_logits)

    def loss(self, batch: Batch) -> Loss:
        if batch.space.budget <= 0:  # the first step of a budget warm-up: x' = x, so the KL term is zero
            return batch.criterion(batch.forward(batch.x), batch.y)
        model = batch.model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            clean_ref = batch.forward(batch.x)
        model.train(was_training)
        step = self.step_size if self.step_size is not None else batch.space.default_step_size(self.steps)
        attack = PGD(
            batch.space, steps=self.steps, step_size=step, init_scale=1e-3,
            loss=self._kl_loss, seed=batch.seed, early_stop=False,
        )
        x_adv = attack(model, batch.x, batch.y, mask=batch.attackable, ids=batch.ids, reference=clean_ref).x_adv
        logits_clean = batch.forward(batch.x)
        logits_adv = batch.forward(x_adv)
        natural = batch.criterion(logits_clean, batch.y).value
        robust = batch.mean(losses.kl(logits_adv, logits_clean))
        return Loss(natural + self.beta * robust, logits_adv.detach(), batch.y)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "beta": self.beta, "steps": self.steps, "step_size": self.step_size}


class Free(Method):
    """Shafahi et al. (2019): each batch is replayed ``replays`` times; one train-mode backward pass
    gives both the parameter gradient and the input gradient, which updates a perturbation carried
    over from batch to batch. Its attack runs in train mode: that shared pass is the method's point.
    The loop divides the number of epochs by ``replays`` so the optimizer steps stay comparable."""

    name = "free"

    def __init__(self, replays: int = 4) -> None:
        if replays < 1:
            raise ConfigError(f"replays must be >= 1, got {replays!r}")
        self.replays = int(replays)
        self.passes = float(self.replays)  # each batch replayed (the epochs are divided by the replays)
        self._delta: torch.Tensor | None = None
        self._x_adv: torch.Tensor | None = None

    def loss(self, batch: Batch) -> Loss:
        x = batch.x
        if self._delta is None or self._delta.shape[1:] != x.shape[1:]:
            self._delta = torch.zeros_like(x)
        delta = self._delta[: len(x)]
        if len(delta) < len(x):
            delta = torch.cat([delta, torch.zeros_like(x[len(delta):])])
        x_adv = batch.space.project(x + delta * batch.attackable.view(-1, *[1] * (x.dim() - 1)), x)
        self._x_adv = x_adv.detach().requires_grad_(True)
        return batch.criterion(batch.forward(self._x_adv), batch.y)

    def after_step(self, batch: Batch) -> None:
        assert self._x_adv is not None
        grad = self._x_adv.grad
        if grad is None:
            return
        keep = batch.attackable.view(-1, *[1] * (grad.dim() - 1))
        moved = batch.space.project(batch.space.step(self._x_adv.detach(), grad, batch.space.budget), batch.x)
        self._delta = (moved - batch.x) * keep
        self._x_adv = None

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "replays": self.replays}


_METHODS: dict[str, type[Method]] = {
    "standard": Standard,
    "fgsm-mix": FGSMMix,
    "fast": Fast,
    "pgd": PGDTraining,
    "trades": TRADES,
    "free": Free,
}

#: names accepted by ``method=``
NAMES = tuple(_METHODS)


def get(method: str | Method, **options: Any) -> Method:
    """The method called ``method`` (configured with ``options``), or ``method`` itself if configured."""
    if isinstance(method, Method):
        if options:
            raise ConfigError("options were given with an already configured method object")
        return method
    if method not in _METHODS:
        raise ConfigError(f"unknown training method {method!r}: choose one of {', '.join(NAMES)}")
    return _METHODS[method](**options)
