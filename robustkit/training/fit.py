"""The one way a domain's model is trained: ``robustkit harden``, ``RobustTabularClassifier`` and
``RobustSpamClassifier`` all call :func:`fit_model`, so they train over the same space, with the same
method resolution, best-epoch rule and operating threshold.

Example:
    >>> import robustkit as rk
    >>> domain = rk.get_domain("toy")
    >>> options = domain.parse_options({})
    >>> data = domain.load_data("toy", seed=0, options=options)
    >>> model = domain.build_model(domain.model_spec(data, options))
    >>> fitted = fit_model(domain, data, model, TrainSettings(method="pgd", budget=0.25, epochs=1, batch_size=128,
    ...                                                       lr=1e-3, seed=0))
    >>> len(fitted.history), fitted.threshold is None
    (1, True)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from robustkit import distributed
from robustkit.errors import ConfigError
from robustkit.training.callbacks import Callback
from robustkit.training.methods import Method
from robustkit.training.methods import get as get_method
from robustkit.training.trainer import AdversarialTrainer

if TYPE_CHECKING:
    from robustkit.domain import Domain, DomainData

__all__ = ["Fitted", "TrainSettings", "fit_model"]


@dataclass(frozen=True)
class TrainSettings:
    """Resolved training settings: every field set, none left for a later default to fill.

    Attributes:
        method: a method name (core or the domain's own, :attr:`~robustkit.domain.Domain.methods`) or a
            configured :class:`~robustkit.training.methods.Method`.
        budget: the threat budget training attacks at.
        epochs, batch_size, lr: training length, batch size and Adam's learning rate.
        seed: seed of the weights' data order and the training attacks.
        budget_warmup: epochs over which the budget grows from 0.
        class_weights: loss weights per class, ``"balanced"``, or None.
        checkpoint_dir: where a checkpoint is written after every epoch (None: none).
        progress: show progress bars.
        callbacks: trainer callbacks (an epoch line, experiment tracking, ...).
    """

    method: str | Method
    budget: float
    epochs: int
    batch_size: int
    lr: float
    seed: int
    budget_warmup: float = 0.0
    class_weights: str | Sequence[float] | None = None
    checkpoint_dir: str | os.PathLike[str] | None = None
    progress: bool = False
    callbacks: tuple[Callback, ...] = ()

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name, value in (("budget", self.budget), ("lr", self.lr)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass
class Fitted:
    """A trained model with its operating threshold (None: argmax), per-epoch history and seconds."""

    model: nn.Module
    threshold: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def fit_model(
    domain: Domain, data: DomainData, model: nn.Module, settings: TrainSettings,
    resume: str | os.PathLike[str] | None = None,
) -> Fitted:
    """Train ``model`` on ``data``'s training split with ``settings``, validate on its validation split,
    and choose the domain's operating threshold on it.

    The space is the domain's training space at ``settings.budget``; a method the domain owns (text's
    ``discrete``) is built by the domain for this data; only the domain's attackable examples are
    attacked; a standard model keeps its last epoch, an adversarial one its best robust epoch. Under
    ``torchrun`` each process trains on its shard of every global batch.
    """
    own = settings.method in domain.methods
    method: str | Method = (domain.training_method(str(settings.method), data, settings.budget) if own
                            else settings.method)
    if not own:
        get_method(method)  # an unknown name is refused before any work
    trainer = AdversarialTrainer(
        model, domain.space(settings.budget, data), method=method,
        optimizer=torch.optim.Adam(model.parameters(), lr=float(settings.lr)),
        budget_warmup=settings.budget_warmup, class_weights=settings.class_weights, attackable=domain.attackable_mask,
        checkpoint_dir=settings.checkpoint_dir, seed=settings.seed, progress=settings.progress,
        callbacks=settings.callbacks,
    )
    trainer.fit(
        distributed.sharded(domain.loader(data.train, settings.batch_size, shuffle=True), shuffle=True,
                            seed=settings.seed),
        epochs=settings.epochs,
        val_loader=domain.loader(data.val, settings.batch_size, shuffle=False),
        resume=resume,
    )
    model.eval()
    seconds = float(sum(r.get("train_seconds", 0.0) + r.get("val_seconds", 0.0) for r in trainer.history))
    return Fitted(model, domain.choose_threshold(model, data), list(trainer.history), seconds)
