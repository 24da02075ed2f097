"""Attacks over perturbation spaces: FGSM, PGD, APGD, random and discrete search, transfer, an ensemble."""

from robustkit.attacks.apgd import APGD, apgd_checkpoints
from robustkit.attacks.base import Attack, AttackResult
from robustkit.attacks.ensemble import Ensemble
from robustkit.attacks.pgd import FGSM, PGD
from robustkit.attacks.random_search import RandomSearch
from robustkit.attacks.search import DiscreteSearch, QuerySearch
from robustkit.attacks.transfer import Transfer

__all__ = [
    "APGD",
    "FGSM",
    "PGD",
    "Attack",
    "AttackResult",
    "DiscreteSearch",
    "Ensemble",
    "QuerySearch",
    "RandomSearch",
    "Transfer",
    "apgd_checkpoints",
]
