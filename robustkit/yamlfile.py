"""YAML from users' files: plain data only, bounded in size and aliases, no key given twice.

``yaml.safe_load`` builds no Python objects, but it takes an "alias bomb" (a few lines whose anchors
expand into billions of values once copied) and keeps the last of two values given for one key.
:func:`load_yaml` refuses both (more than :data:`MAX_ALIASES` aliases, or more than :data:`MAX_VALUES`
values once expanded), and a text longer than :data:`MAX_BYTES`, with a :class:`~robustkit.errors.ConfigError`.

Example:
    >>> load_yaml("epochs: 2\\nlr: 0.01\\n", "config.yaml")
    {'epochs': 2, 'lr': 0.01}
    >>> load_yaml("epochs: 1\\nepochs: 3\\n", "config.yaml")
    Traceback (most recent call last):
    ...
    robustkit.errors.ConfigError: config.yaml is not valid YAML: the key 'epochs' is given twice (line 2)
"""

from __future__ import annotations

from typing import Any

import yaml

from robustkit.errors import ConfigError

__all__ = ["MAX_ALIASES", "MAX_BYTES", "MAX_VALUES", "load_yaml"]

#: the largest config or schema text read (a schema of thousands of columns is far smaller)
MAX_BYTES = 1 << 20
#: the most aliases (``*name``) one document may use, and the most values it may expand to
MAX_ALIASES, MAX_VALUES = 100, 100_000


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that counts aliases and refuses a mapping key given twice."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (line {mark.line + 1}): an alias bomb?")
        return super().compose_node(parent, index)

    def compose_document(self) -> Any:
        node = super().compose_document()
        size = _expanded_size(node, {})
        if size > MAX_VALUES:
            raise yaml.YAMLError(f"its aliases expand to more than {MAX_VALUES} values ({size}): an alias bomb?")
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then an override is fine
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    twice = key in seen
                except TypeError:  # an unhashable key: the constructor refuses it itself
                    continue
                if twice:
                    raise yaml.YAMLError(f"the key {key!r} is given twice (line {key_node.start_mark.line + 1})")
                seen.add(key)
        return super().construct_mapping(node, deep)


def _expanded_size(node: Any, sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for once every alias in it is expanded (linear time: sizes are memoised
    per node, and an alias is the very node it names)."""
    if id(node) not in sizes:
        sizes[id(node)] = 1  # a recursive alias counts once
        if isinstance(node, yaml.SequenceNode):
            sizes[id(node)] += sum(_expanded_size(child, sizes) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            sizes[id(node)] += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    return sizes[id(node)]


def load_yaml(text: str, source: str) -> Any:
    """The data of YAML ``text`` read from ``source`` (named in errors)."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{source} holds {len(text)} characters: more than the {MAX_BYTES} a config or schema may")
    try:
        loader = _Loader(text)  # its reader refuses some characters at once
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {' '.join(str(exc).split())}") from None
