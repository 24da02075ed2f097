"""Robustness evaluation: :func:`evaluate`, the :class:`RobustnessReport`, gradient-masking checks and curves.

Example:
    >>> from robustkit.evaluation import PRESETS
    >>> sorted(PRESETS)
    ['aa-rand', 'aa-standard', 'autoattack', 'quick', 'standard', 'thorough']
"""

from robustkit.evaluation.checks import Check, CheckSettings
from robustkit.evaluation.curves import Curve, robustness_curve
from robustkit.evaluation.presets import ATTACKS, PRESETS, describe_presets
from robustkit.evaluation.report import RobustnessReport
from robustkit.evaluation.runner import evaluate

__all__ = [
    "ATTACKS",
    "PRESETS",
    "Check",
    "CheckSettings",
    "Curve",
    "RobustnessReport",
    "describe_presets",
    "evaluate",
    "robustness_curve",
]
