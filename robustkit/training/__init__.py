"""Adversarial training: one loop (:class:`AdversarialTrainer`) and small methods (:mod:`.methods`)."""

from robustkit.training import methods
from robustkit.training.callbacks import Callback
from robustkit.training.trainer import AdversarialTrainer

__all__ = ["AdversarialTrainer", "Callback", "methods"]
