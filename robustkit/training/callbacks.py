"""Callbacks: hooks into the training loop (logging, early stopping, custom checks).

Example:
    >>> import robustkit as rk
    >>> class StopAfter(rk.training.Callback):
    ...     def on_epoch_end(self, trainer, record):
    ...         trainer.stop_training = record["epoch"] >= 2
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from robustkit.training.trainer import AdversarialTrainer

__all__ = ["Callback"]


class Callback:
    """Base class: override the hooks you need; set ``trainer.stop_training = True`` to stop."""

    def on_fit_start(self, trainer: AdversarialTrainer) -> None:
        """Before the first epoch (after a resume, before the first remaining epoch)."""

    def on_epoch_start(self, trainer: AdversarialTrainer) -> None:
        """Before every epoch (``trainer.epoch`` epochs are done); e.g. regenerate training data."""

    def on_step_end(self, trainer: AdversarialTrainer, loss: float) -> None:
        """After every optimizer step."""

    def on_epoch_end(self, trainer: AdversarialTrainer, record: dict[str, Any]) -> None:
        """After every epoch, with its history record (after validation and checkpointing)."""

    def on_fit_end(self, trainer: AdversarialTrainer) -> None:
        """After training (and after the best weights were restored)."""
