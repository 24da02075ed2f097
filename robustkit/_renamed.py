"""Names renamed for the one budget vocabulary, still taken for one release with a warning.

``budget`` names one threat size and ``budgets`` several, whatever the space (an Lp radius, a cost, a
number of edited words); ``eps`` is left to the radius of an Lp ball (``rk.LinfBall(eps=...)``). The
first version used ``eps`` for the list of budgets evaluated and for the warm-up of the training
budget; those old names are mapped to the new ones until robustkit 0.3.

Example:
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     renamed("eps", [0.1], "budgets", None, where="rk.evaluate")
    [0.1]
    >>> str(caught[0].message)
    'rk.evaluate: eps is deprecated and will be removed in robustkit 0.3: use budgets'
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from robustkit.errors import ConfigError

__all__ = ["RENAMED_KEYS", "notice", "renamed", "renamed_keys"]

T = TypeVar("T")

#: config keys of the first version and their names now
RENAMED_KEYS = {"eps": "budgets", "eps_warmup": "budget_warmup"}


def notice(old: str, new: str, where: str) -> str:
    """The one line that says ``old`` is deprecated in favour of ``new``."""
    return f"{where}: {old} is deprecated and will be removed in robustkit 0.3: use {new}"


def renamed(old: str, old_value: Any, new: str, new_value: T, *, where: str, stacklevel: int = 3,
            say: Callable[[str], None] | None = None) -> T:
    """``new_value``, or the value given under the ``old`` name (with a :class:`DeprecationWarning`, or
    the line :func:`notice` handed to ``say``: the command line prints it).

    Raises:
        ConfigError: both names were given.
    """
    if old_value is None:
        return new_value
    if new_value is not None:
        raise ConfigError(f"{where}: give {new} only ({old} is its deprecated old name), not both")
    if say is not None:
        say(notice(old, new, where))
    else:
        warnings.warn(notice(old, new, where), DeprecationWarning, stacklevel=stacklevel)
    return old_value


def renamed_keys(values: dict[str, Any], where: str) -> dict[str, Any]:
    """A copy of a config mapping with the old keys of :data:`RENAMED_KEYS` under their new names."""
    out = dict(values)
    for old, new in RENAMED_KEYS.items():
        if old in out:
            if new in out:
                raise ConfigError(f"{where}: give {new} only ({old} is its deprecated old name), not both")
            warnings.warn(notice(old, new, where), DeprecationWarning, stacklevel=3)
            out[new] = out.pop(old)
    return out
