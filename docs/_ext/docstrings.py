"""Griffe extension for the docs build: read robustkit's docstrings as Google-style Markdown.

The code's docstrings say ``Example:`` (Google style lists only ``Examples:`` as a section) and use
Sphinx roles such as :class:`~robustkit.spaces.LinfBall`. Before griffe parses a docstring, this
extension renames the section so that doctests render as code, and turns each role into a plain code
span. The source files are not changed.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const|ref):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2).strip()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class MarkdownDocstrings(Extension):
    """Rename ``Example:`` to ``Examples:`` and turn Sphinx roles into code spans."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is None:
            return
        value = _EXAMPLE.sub(r"\1Examples:", docstring.value)
        docstring.value = _ROLE.sub(_role, value)
