"""Adversarial training: one loop (:class:`AdversarialTrainer`), small methods (:mod:`.methods`)
and callbacks (:mod:`.callbacks`: epoch lines, TensorBoard, MLflow)."""

from robustkit.training import callbacks, methods
from robustkit.training.callbacks import Callback, TrainerControl
from robustkit.training.trainer import AdversarialTrainer

__all__ = ["AdversarialTrainer", "Callback", "TrainerControl", "callbacks", "methods"]
