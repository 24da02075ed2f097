"""robustkit: harden machine-learning models against adversarial inputs.

Example:
    >>> import torch, robustkit as rk
    >>> space = rk.LinfBall(eps=0.1, bounds=(0.0, 1.0))
    >>> result = rk.PGD(space, steps=3)(torch.nn.Linear(4, 2), torch.rand(5, 4), torch.zeros(5, dtype=torch.long))
    >>> result.x_adv.shape
    torch.Size([5, 4])
"""

from robustkit import losses
from robustkit.attacks import FGSM, PGD, Attack, AttackResult
from robustkit.errors import ConfigError, DataError, ModelError, RobustkitError
from robustkit.models import ThresholdModel, frozen_eval, logits_of
from robustkit.spaces import ContinuousSpace, DiscreteSpace, Edit, L2Ball, LinfBall, PerturbationSpace

__version__ = "0.1.0"

__all__ = [
    "FGSM",
    "PGD",
    "Attack",
    "AttackResult",
    "ConfigError",
    "ContinuousSpace",
    "DataError",
    "DiscreteSpace",
    "Edit",
    "L2Ball",
    "LinfBall",
    "ModelError",
    "PerturbationSpace",
    "RobustkitError",
    "ThresholdModel",
    "__version__",
    "frozen_eval",
    "logits_of",
    "losses",
]
