"""Exception types: every error robustkit raises on purpose is a :class:`RobustkitError`.

Each message says what was wrong and how to fix it, and is raised before any training step
or file write (one probe batch at most).
"""

from __future__ import annotations


class RobustkitError(Exception):
    """Base class of every error robustkit raises on purpose."""


class ConfigError(RobustkitError, ValueError):
    """An option, budget or configuration value is invalid."""


class DataError(RobustkitError, ValueError):
    """Inputs or labels are invalid (NaN, out of bounds, out of range, empty)."""


class ModelError(RobustkitError):
    """The model's outputs do not fit the task (wrong shape, not logits, non-finite)."""


class DiskFullError(RobustkitError, OSError):
    """The disk filled up while a run was written (what was written before is whole; the run can go on)."""
