"""Reading the YAML a user wrote: UTF-8 text, no aliases, bounded nesting, no duplicate keys.

PyYAML's `safe_load` runs no code, but it accepts what a spec never needs and a careless or hostile
file can abuse: aliases (`*a`) that expand a few lines into billions of nodes, nesting deep enough
to exhaust the stack, and a key given twice (the last silently wins). Each is refused here with its
line, before anything is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_DEPTH = 32  # mappings and lists inside one another; a spec needs about 6


class YamlRefused(ValueError):
    """The text is not YAML a spec may be written in; the message says where and why."""


def read_text(path: Path) -> str:
    """The file's text, which must be UTF-8 (a spec is text; Latin-1 or binary is refused). The
    caller names the file in its message, as it does for `load`'s."""
    data = path.read_bytes()
    if b"\0" in data:
        raise YamlRefused("a binary file, not a YAML spec: give the path of a text file "
                          "written as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise YamlRefused(f"line {line}: byte 0x{data[exc.start]:02x} is not UTF-8; save the file "
                          "as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def load(text: str) -> Any:
    """The YAML document in `text`, refused if it uses an alias, nests deeper than MAX_DEPTH or
    gives a mapping the same key twice. Raises YamlRefused, or yaml.YAMLError for broken YAML."""
    _check_events(text)
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no code runs


def _check_events(text: str) -> None:
    """Aliases and depth, from the parser's events: nothing is composed before the check."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise YamlRefused(f"line {event.start_mark.line + 1}: an alias (*{event.anchor}); specs may not use "
                              "YAML anchors and aliases: write the value out in full")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise YamlRefused(f"line {event.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep; "
                                  "a spec needs a few: flatten the structure")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise YamlRefused(f"line {key_node.start_mark.line + 1}: the key {key!r} is given twice in one "
                                      f"mapping (first on line {seen[key] + 1}); keep one")
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def replace_scalars(text: str, path: list[str], values: dict[str, str]) -> str:
    """`text` with the scalar values of the keys in `values`, in the mapping at key `path`, replaced by
    the YAML written in `values`; every other character kept (comments, order, quoting, flow or block
    style), where a load and dump would lose them. Raises YamlRefused naming what is missing."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    for depth, key in enumerate(path):
        node = _child(node, key, ".".join(path[:depth + 1]))
    spans = []
    for key, value in values.items():
        child = _child(node, key, ".".join([*path, key]))
        if not isinstance(child, yaml.ScalarNode):
            raise YamlRefused(f"line {child.start_mark.line + 1}: {'.'.join([*path, key])} is not a single value")
        spans.append((child.start_mark.index, child.end_mark.index, value))
    for start, end, value in sorted(spans, reverse=True):
        text = text[:start] + value + text[end:]
    return text


def _child(node: Any, key: str, where: str) -> Any:
    """The value node of `key` in mapping `node`."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                return value_node
    raise YamlRefused(f"no {where} mapping entry")
