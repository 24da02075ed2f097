"""Every HTML page and fragment robustkit writes or shows, rendered from Jinja2 templates in one environment.

The templates live in ``robustkit/templates`` (a domain keeps its own in ``<its package>/templates`` and may
use the core's macros and page layout from there). Autoescaping is on: every value a template shows
(a label, a text, a column name, a verdict) is escaped unless it is :class:`~markupsafe.Markup` that this
module rendered. One stylesheet, ``robustkit.css``, styles them all, and every rule in it is scoped to the
class :data:`ROOT` carried by the outermost element (the ``<body>`` of a page, the ``<div>`` of a
fragment), so a report shown in a notebook cell cannot restyle the notebook around it.

Example:
    >>> from robustkit.rendering import ROOT, render
    >>> html = render("page.html.j2", title="<b>")
    >>> "<title>&lt;b&gt;</title>" in html and f'<body class="{ROOT} robustkit-page">' in html
    True
"""

from __future__ import annotations

import functools
from typing import Any

import jinja2
from markupsafe import Markup

__all__ = ["ROOT", "environment", "render"]

#: the class of the outermost element of every page and fragment; every CSS rule starts with it
ROOT = "robustkit-report"


@functools.cache
def environment(package: str = "robustkit") -> jinja2.Environment:
    """The environment of ``package``'s templates (its ``templates`` folder), falling back to the core's.

    Example:
        >>> environment().autoescape
        True
    """
    loaders = [jinja2.PackageLoader(package, "templates")]
    if package != "robustkit":  # a domain's templates may extend the core's page or import its macros
        loaders.append(jinja2.PackageLoader("robustkit", "templates"))
    env = jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.globals["root"] = ROOT
    return env


def render(template: str, package: str = "robustkit", **context: Any) -> Markup:
    """``template`` of ``package`` rendered with ``context``: markup that other templates embed as is.

    A domain renders the fragment of :meth:`robustkit.Domain.examples_html` with its own package name;
    a plain string in its place would be shown escaped, as text.
    """
    return Markup(environment(package).get_template(template).render(**context))
