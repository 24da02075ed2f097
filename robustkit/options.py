"""Typed domain options: one frozen dataclass per domain, checked once, that documents itself and makes its
own command-line flags.

A domain declares its options as fields made with :func:`option` (a default, a help line, optionally a
``--flag`` and a check). :meth:`DomainOptions.parse` turns a config file's ``options:`` mapping into the
dataclass and refuses unknown keys and values of the wrong type or range, naming the key; the CLI adds a
flag for every field that names one, so the core command line knows no domain by name.

Example:
    >>> from dataclasses import dataclass
    >>> from robustkit.options import DomainOptions, option
    >>> @dataclass(frozen=True)
    ... class ShapeOptions(DomainOptions):
    ...     width: int = option(16, "channels of the first layer", flag="--width", check=lambda v: v >= 1,
    ...                         must="an integer >= 1")
    ...     norm: str = option("linf", "threat norm", choices=("linf", "l2"))
    >>> ShapeOptions.parse({"width": 32}, "shapes").width
    32
    >>> ShapeOptions.parse({"norm": "l1"}, "shapes")
    Traceback (most recent call last):
    ...
    robustkit.errors.ConfigError: options.norm must be one of linf, l2, got 'l1'
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from robustkit.errors import ConfigError

__all__ = ["DomainOptions", "option"]

OptionsT = TypeVar("OptionsT", bound="DomainOptions")


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    choices: Sequence[Any] | None = None,
    check: Callable[[Any], bool] | None = None,
    must: str | None = None,
) -> Any:
    """A field of a :class:`DomainOptions` dataclass.

    ``help`` documents it (in ``--help`` and the docs); ``flag`` (e.g. ``"--schema"``) makes it a command-line
    flag too; ``choices`` lists the values allowed; ``check`` is a further test of a well-typed value, ``must``
    the words that complete "options.NAME must be ..." when a value fails it. A list default is copied per
    instance.
    """
    metadata = {"help": help, "flag": flag, "choices": tuple(choices) if choices is not None else None,
                "check": check, "must": must}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _matches(value: Any, kind: Any) -> bool:
    """Whether ``value`` has the annotated type ``kind`` (the types options use: scalars, lists of them,
    unions with None)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, k) for k in typing.get_args(kind))
    if origin is list:
        (item,) = typing.get_args(kind)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if kind is type(None):
        return value is None
    if kind is Any:
        return True
    if kind is bool:
        return isinstance(value, bool)
    if kind is float:  # an integer in a YAML file is a number too
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _describe(kind: Any) -> str:
    """Words for the annotated type ``kind``: "an integer", "a list of column names or null", ..."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(k) for k in typing.get_args(kind))
    if origin is list:
        return f"a list of {_describe(typing.get_args(kind)[0]).split(' ', 1)[1]}s"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a text",
            type(None): "null"}.get(kind, f"a {getattr(kind, '__name__', kind)}")


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


@dataclass(frozen=True)
class DomainOptions:
    """Base of a domain's options: subclass it as a frozen dataclass of :func:`option` fields.

    Every value is checked when the object is made (:meth:`parse` from a mapping, or the constructor), so a
    domain reads fields, never raw keys. ``given`` holds the names set explicitly: the keys of the mapping
    :meth:`parse` read, or the fields a constructor set off their defaults (a check that an option applies
    to some data only needs to know it was asked for).
    """

    given: frozenset[str] = field(default=frozenset(), repr=False, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        if not self.given:  # made by the constructor: the options given are those off their defaults
            changed = frozenset(f.name for f in self.fields() if getattr(self, f.name) != _default(f))
            object.__setattr__(self, "given", changed)
        hints = typing.get_type_hints(type(self))
        for f in self.fields():
            value, meta = getattr(self, f.name), f.metadata
            if not _matches(value, hints[f.name]):
                raise ConfigError(f"options.{f.name} must be {_describe(hints[f.name])}, got {value!r}")
            if meta["choices"] is not None and value not in meta["choices"]:
                raise ConfigError(f"options.{f.name} must be one of {', '.join(map(str, meta['choices']))}, "
                                  f"got {value!r}")
            if value is not None and meta["check"] is not None and not meta["check"](value):
                raise ConfigError(f"options.{f.name} must be {meta['must']}, got {value!r}")

    @classmethod
    def fields(cls) -> list[dataclasses.Field[Any]]:
        """The option fields (``given`` left out)."""
        return [f for f in dataclasses.fields(cls) if f.name != "given"]

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in cls.fields()]

    @classmethod
    def parse(cls: type[OptionsT], values: Mapping[str, Any], domain: str) -> OptionsT:
        """The options of a config file's ``options:`` mapping, checked; an unknown key names the allowed ones."""
        if isinstance(values, cls):
            return values
        if not isinstance(values, Mapping):
            raise ConfigError(f"options must be a mapping of option names to values, got {values!r}")
        unknown = sorted(set(values) - set(cls.names()), key=str)
        if unknown:
            allowed = ", ".join(cls.names()) or f"none (domain {domain!r} takes no options)"
            raise ConfigError(f"unknown {domain} option {unknown[0]!r}: allowed options are {allowed}")
        return cls(**dict(values), given=frozenset(values))

    def to_dict(self) -> dict[str, Any]:
        """The options set explicitly, as a config file's ``options:`` holds them."""
        return {name: getattr(self, name) for name in self.names() if name in self.given}

    def replace(self: OptionsT, **changes: Any) -> OptionsT:
        """A copy with ``changes`` applied (and counted as given), checked again."""
        return dataclasses.replace(self, **changes, given=self.given | frozenset(changes))

    # ----------------------------------------------------------------- command line
    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        """Add a flag for every option that names one (its value goes to ``options.NAME``)."""
        hints = typing.get_type_hints(cls)
        group = parser.add_argument_group("domain options (also options.NAME in a config file)")
        for f in cls.fields():
            flag = f.metadata["flag"]
            if flag is None:
                continue
            text = f"{f.metadata['help']} (options.{f.name})"
            if hints[f.name] is bool:  # a switch that turns the option on
                group.add_argument(flag, dest=f"option_{f.name}", action="store_const", const=True, default=None,
                                   help=text)
                continue
            # numbers are parsed as numbers; anything else (a path, a column, a label) stays the text typed
            kind = {int: int, int | None: int, float: float, float | None: float}.get(hints[f.name], str)
            group.add_argument(flag, dest=f"option_{f.name}", default=None, metavar=f.name.upper(), type=kind,
                               choices=f.metadata["choices"], help=text)

    @classmethod
    def from_flags(cls, args: argparse.Namespace) -> dict[str, Any]:
        """The options given as flags in ``args``, by name."""
        values = {f.name: getattr(args, f"option_{f.name}", None) for f in cls.fields()}
        return {k: v for k, v in values.items() if v is not None}
