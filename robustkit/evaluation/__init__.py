"""Robustness evaluation: :func:`evaluate`, the :class:`RobustnessReport` and gradient-masking checks.

Example:
    >>> from robustkit.evaluation import PRESETS
    >>> sorted(PRESETS)
    ['quick', 'standard', 'thorough']
"""

from robustkit.evaluation.checks import Check, CheckSettings
from robustkit.evaluation.presets import ATTACKS, PRESETS, describe_presets
from robustkit.evaluation.report import RobustnessReport
from robustkit.evaluation.runner import evaluate

__all__ = ["ATTACKS", "PRESETS", "Check", "CheckSettings", "RobustnessReport", "describe_presets", "evaluate"]
