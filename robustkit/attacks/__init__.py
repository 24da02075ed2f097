"""Attacks over perturbation spaces: FGSM, PGD, APGD, random and discrete search, transfer, an ensemble."""

from robustkit.attacks.apgd import APGD, apgd_checkpoints
from robustkit.attacks.base import Attack, AttackResult
from robustkit.attacks.ensemble import Ensemble
from robustkit.attacks.fab import FAB
from robustkit.attacks.fmn import FMN
from robustkit.attacks.functional import attack, attack_result
from robustkit.attacks.pgd import FGSM, PGD
from robustkit.attacks.random_search import RandomSearch
from robustkit.attacks.search import DiscreteSearch, QuerySearch
from robustkit.attacks.square import Square
from robustkit.attacks.transfer import Transfer

__all__ = [
    "APGD",
    "FAB",
    "FGSM",
    "FMN",
    "PGD",
    "Attack",
    "AttackResult",
    "DiscreteSearch",
    "Ensemble",
    "QuerySearch",
    "RandomSearch",
    "Square",
    "Transfer",
    "apgd_checkpoints",
    "attack",
    "attack_result",
]
