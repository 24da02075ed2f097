"""Attacks over perturbation spaces: FGSM, PGD, APGD, a gradient-guided discrete search, an ensemble."""

from robustkit.attacks.base import Attack, AttackResult
from robustkit.attacks.pgd import FGSM, PGD

__all__ = ["FGSM", "PGD", "Attack", "AttackResult"]
