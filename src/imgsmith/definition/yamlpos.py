"""YAML loading that remembers where every value came from, for FILE:LINE:COL errors.

PyYAML's composer gives nodes with start marks; we build plain Python data from
them and keep a map from each value's path (tuple of keys and indices) to its
1-based (line, column). Duplicate keys are errors, since a silently dropped key is
a classic source of "my setting did nothing".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["Located", "PathT", "load_located"]

PathT = tuple[str | int, ...]


@dataclass
class Located:
    data: Any
    marks: dict[PathT, tuple[int, int]] = field(default_factory=dict)
    problems: list[tuple[PathT, str, tuple[int, int]]] = field(default_factory=list)

    def where(self, path: Iterable[str | int]) -> tuple[int, int]:
        """The position of *path*, or of its nearest located ancestor."""
        p = tuple(path)
        while p not in self.marks and p:
            p = p[:-1]
        return self.marks.get(p, (1, 1))


def _build(node: yaml.Node, path: PathT, out: Located) -> Any:
    out.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node)) if not isinstance(key_node, yaml.ScalarNode) \
                else key_node.value
            key = str(key)
            if key in result:
                pos = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                out.problems.append(((*path, key), f"duplicate key {key!r}", pos))
                continue
            result[key] = _build(value_node, (*path, key), out)
            # Point key errors (unknown key) at the key itself, values at the value.
            out.marks[(*path, key, "<key>")] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), out) for i, item in enumerate(node.value)]
    # Scalars: let the safe constructor resolve types (int, bool, null, str).
    return yaml.safe_load(yaml.serialize(node)) if node.tag != "tag:yaml.org,2002:str" else node.value


def load_located(text: str) -> Located:
    """Parse YAML text; a syntax error raises yaml.YAMLError (with its own mark)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    out = Located(data=None)
    if node is None:
        out.data = None
        return out
    out.data = _build(node, (), out)
    return out
