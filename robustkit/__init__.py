"""robustkit: harden machine-learning models against adversarial inputs.

Example:
    >>> import torch, robustkit as rk
    >>> space = rk.LinfBall(eps=0.1, bounds=(0.0, 1.0))
    >>> result = rk.PGD(space, steps=3)(torch.nn.Linear(4, 2), torch.rand(5, 4), torch.zeros(5, dtype=torch.long))
    >>> result.x_adv.shape
    torch.Size([5, 4])
"""

from robustkit import datasets, losses
from robustkit.attacks import (
    APGD,
    FAB,
    FGSM,
    FMN,
    PGD,
    Attack,
    AttackResult,
    DiscreteSearch,
    Ensemble,
    QuerySearch,
    RandomSearch,
    Square,
    Transfer,
    attack,
    attack_result,
)
from robustkit.domain import DatasetInfo, Domain, DomainData, available_domains, get_domain, register_domain
from robustkit.errors import ConfigError, DataError, DiskFullError, ModelError, RobustkitError
from robustkit.evaluation import RobustnessReport, evaluate
from robustkit.models import ThresholdModel, frozen_eval, logits_of
from robustkit.spaces import ContinuousSpace, DiscreteSpace, Edit, L2Ball, LinfBall, PerturbationSpace
from robustkit.training import AdversarialTrainer, Callback, callbacks, methods

__version__ = "0.1.0"

__all__ = [
    "APGD",
    "FAB",
    "FGSM",
    "FMN",
    "PGD",
    "AdversarialTrainer",
    "Attack",
    "AttackResult",
    "Callback",
    "ConfigError",
    "ContinuousSpace",
    "DataError",
    "DatasetInfo",
    "DiscreteSearch",
    "DiscreteSpace",
    "DiskFullError",
    "Domain",
    "DomainData",
    "Edit",
    "Ensemble",
    "L2Ball",
    "LinfBall",
    "ModelError",
    "PerturbationSpace",
    "QuerySearch",
    "RandomSearch",
    "RobustkitError",
    "RobustnessReport",
    "Square",
    "ThresholdModel",
    "Transfer",
    "__version__",
    "attack",
    "attack_result",
    "available_domains",
    "callbacks",
    "datasets",
    "evaluate",
    "frozen_eval",
    "get_domain",
    "logits_of",
    "losses",
    "methods",
    "register_domain",
]
