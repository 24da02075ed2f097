"""Attacks over perturbation spaces: FGSM, PGD, APGD, a gradient-guided discrete search, an ensemble."""

from robustkit.attacks.apgd import APGD, apgd_checkpoints
from robustkit.attacks.base import Attack, AttackResult
from robustkit.attacks.ensemble import Ensemble
from robustkit.attacks.pgd import FGSM, PGD
from robustkit.attacks.random_search import RandomSearch
from robustkit.attacks.search import DiscreteSearch

__all__ = [
    "APGD",
    "FGSM",
    "PGD",
    "Attack",
    "AttackResult",
    "DiscreteSearch",
    "Ensemble",
    "RandomSearch",
    "apgd_checkpoints",
]
